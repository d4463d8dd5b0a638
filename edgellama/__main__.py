from edgellama.cli import main

main()
