"""The ``m2s2l-deploy`` Typer app: every verb registered in one place, and ``main``.

User mistakes surface as ``UserError`` and print one red line with exit code 2; anything else is
a bug and keeps its traceback. Imports go one way: this module imports the verb modules, they
import ``common`` / ``tables`` and the jobs below them, nothing imports this module but the
entry points.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from .. import __version__
from ..errors import UserError
from . import check, demo, deploy, model, serve, watch
from .common import console, out

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="M2S2L video anomaly detection: train, evaluate, export and deploy.")

# data and model
app.command("synth")(model.synth)
app.command("train")(model.train)
app.command("evaluate")(model.evaluate)
app.command("info")(model.info)
# deployable files
app.command("export")(deploy.export)
app.command("build-engine")(deploy.build_engine)
# checks of a deployed model
app.command("validate")(check.validate)
app.command("bench")(check.bench)
app.command("bench-server")(check.bench_server)
# live sources
app.command("watch")(watch.watch)
# serving
app.command("package")(serve.package)
app.command("serve")(serve.serve)
# everything at once
app.command("demo")(demo.demo)


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    if version:
        out.print(f"m2s2l-deploy {__version__}")
        raise typer.Exit()


def main() -> None:
    try:
        rc = app(standalone_mode=False)  # returns typer.Exit's code instead of exiting
    except UserError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        console.print("[red]aborted[/red]")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # usage errors (Typer's bundled click) arrive here in non-standalone mode
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
