"""Subcommands of the `rotation` command line; see rotation_tools/cli.py for the contract each module follows."""
