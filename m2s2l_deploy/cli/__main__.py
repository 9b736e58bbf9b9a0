"""``python -m m2s2l_deploy.cli``: the CLI."""

from .app import main

main()
