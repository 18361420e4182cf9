from hwbcnet.cli import main

main()
