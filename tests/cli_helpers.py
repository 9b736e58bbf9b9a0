"""Shared by the CLI-driving tests: run the CLI in a subprocess, check the one-line error contract,
load a benchmark script as a module."""

import importlib.util
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "m2s2l_deploy.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=900)


def assert_user_error(proc, *needles):
    """Exit 2, no traceback, exactly one stderr line starting with 'error:' containing the needles."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
