"""What every verb module of the CLI shares: the consoles, progress bars, JSON output, formatting.

Verb modules import from here, never from each other or from ``app`` (which imports them).
"""

from __future__ import annotations

import re
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import UserError, require

console = Console(stderr=True)     # progress, notes, warnings, errors
out = Console()                    # results: tables and JSON

DATASETS = "auto|ped2|avenue|shanghaitech|frames|videos"


def progress() -> Progress:
    """A progress bar on a terminal; silent in logs (CI), where jobs print their own lines."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False, disable=not console.is_terminal)


def train_progress(prog: Progress, total_steps: int | None, budget_s: float | None):
    """Progress callback for training: a bar on a terminal, a line every 30 s in logs (CI)."""
    by_time = total_steps is None
    task = prog.add_task("train", total=total_steps if not by_time else int(budget_s), info="")
    last = [0.0]

    def cb(step, elapsed, loss):
        prog.update(task, completed=int(elapsed) if by_time else step, info=f"step {step} loss {loss:.4f}")
        if not console.is_terminal and elapsed - last[0] >= 30:
            last[0] = elapsed
            console.print(f"train: step {step}, {elapsed:.0f} s, loss {loss:.4f}")
    return cb


def counting_progress(prog: Progress):
    """``factory(total) -> advance(n)`` for jobs that count clips (evaluate)."""
    def factory(total):
        task = prog.add_task("evaluate", total=total, info="")
        return lambda n: prog.advance(task, n)
    return factory


def needs_torch(verb: str) -> None:
    """One line instead of an ImportError when a verb that runs PyTorch meets an ONNX-only install."""
    require("torch", f"`{verb}`", "torch")


def set_torch_threads(threads: int | None) -> None:
    """PyTorch's CPU thread count, set once per command before any model is built (process-wide:
    runners and jobs never change it)."""
    if threads:
        if threads < 1:
            raise UserError(f"--threads must be >= 1, got {threads}")
        require("torch", "--threads for the PyTorch runner", "torch").set_num_threads(int(threads))


def parse_size(size: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", size)
    if not m:
        raise UserError(f"--size must look like HxW (e.g. 120x160), got '{size}'")
    h, w = int(m.group(1)), int(m.group(2))
    if not (32 <= h <= 2048 and 32 <= w <= 2048):
        raise UserError("--size must be between 32 and 2048 pixels per side")
    return h, w


def threshold_arg(text: str):
    """--threshold: 'auto' (the model's calibration), 'none'/'off' (no alerts) or a number."""
    t = text.strip().lower()
    if t == "auto":
        return "auto"
    if t in ("none", "off"):
        return None
    try:
        return float(t)
    except ValueError:
        raise UserError(f"--threshold must be auto, none or a number, got '{text}'") from None


def write_json(path: Path | None, data: dict) -> None:
    if path is None:
        return
    from ..files import atomic_write_json
    try:
        atomic_write_json(Path(path), data)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    console.print(f"wrote {path}")


def fmt(x, digits=4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"
