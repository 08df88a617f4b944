from bench.packing.run import main

main()
