from ccmsec_tftp_signer.main import main

main()
