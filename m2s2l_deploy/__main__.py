"""``python -m m2s2l_deploy``: the CLI."""

from .cli.app import main

main()
