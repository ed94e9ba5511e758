from ccmsec_ctl_provider.main import main

main()
