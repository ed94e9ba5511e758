from ccmsec_capf.main import main

main()
