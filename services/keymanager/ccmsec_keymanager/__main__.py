from ccmsec_keymanager.main import main

main()
