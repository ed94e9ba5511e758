from ccmsec_srst.main import main

main()
