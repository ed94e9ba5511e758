from ccmsec_srtp_gateway.main import main

main()
