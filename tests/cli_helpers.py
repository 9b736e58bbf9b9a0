"""Shared by the CLI-driving tests: run the CLI in a subprocess, check the one-line error contract."""

import subprocess
import sys


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
