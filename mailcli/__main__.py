"""`python -m mailcli` runs the command-line interface."""

from mailcli.cli import main

main()
