from igcli.cli.launch import main

main()
