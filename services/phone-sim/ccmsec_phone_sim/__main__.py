from ccmsec_phone_sim.main import main

main()
