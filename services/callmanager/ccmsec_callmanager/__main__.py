from ccmsec_callmanager.main import main

main()
