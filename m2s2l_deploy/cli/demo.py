"""``demo``: the whole chain on an embedded default (the job is ``jobs.demo.run_demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .common import console, counting_progress, needs_torch, out, progress, set_torch_threads, train_progress
from .tables import ablation_table, print_bench_summary, report_table, validate_table


def demo(workdir: Path = typer.Option(Path("runs/demo"), "--workdir", help="Where the scene, run and report go."),
         minutes: float = typer.Option(10.0, help="Training budget for the tiny model (the README result: 10)."),
         train_seed: int = typer.Option(0, help="Seed of the training scene."),
         test_seed: int = typer.Option(1, help="Seed of the (different) test scene."),
         threads: Optional[int] = typer.Option(None, help="torch CPU threads.")):
    """The whole chain on an embedded default: synthesise, train tiny, evaluate, deploy, bench.

    Evaluates on a scene of another seed, then exports, quantizes, validates, builds an engine and
    benches a video.
    """
    needs_torch("demo")
    set_torch_threads(threads)
    from ..jobs.demo import run_demo

    def show(kind: str, payload) -> None:
        if kind == "evaluate":
            out.print(report_table(payload, f"tiny on unseen scene seed {test_seed}: {payload['n_frames']} frames"))
            if (t := ablation_table(payload)) is not None:
                out.print(t)
        elif kind == "validate":
            out.print(validate_table(payload))
            for name, r in payload.items():
                for w in r["warnings"]:
                    console.print(f"[yellow]validate {name}: {escape(w)}[/yellow]", highlight=False)
        elif kind == "bench":
            print_bench_summary(payload)

    with progress() as prog:
        run_demo(workdir, minutes, train_seed, test_seed, log=lambda msg: console.print(escape(msg)), show=show,
                 train_progress_factory=lambda total, budget: train_progress(prog, total, budget),
                 eval_progress_factory=counting_progress(prog))
