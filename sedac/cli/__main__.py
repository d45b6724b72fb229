from sedac.cli import main

main()
