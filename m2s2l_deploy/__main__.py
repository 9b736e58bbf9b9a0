"""``python -m m2s2l_deploy``: the CLI."""

from .cli import main

main()
