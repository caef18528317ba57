"""Subcommands of the `rotation` command line; see rotation/cli.py for the contract each module follows."""
