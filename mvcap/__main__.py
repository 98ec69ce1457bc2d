from mvcap.cli import main

main()
