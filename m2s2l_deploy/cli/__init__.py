"""The ``m2s2l-deploy`` command line: thin. It parses options, calls a job or a library function,
and prints; the work lives in ``jobs/``, ``export/``, ``engine/`` and ``serving/``.

``app`` builds the Typer app from the verb modules (``model``, ``deploy``, ``check``, ``serve``,
``demo``), which share ``common`` and ``tables`` and never import each other.
"""

from .app import app, main

__all__ = ["app", "main"]
