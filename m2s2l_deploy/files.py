"""File helpers shared by every writer: atomic writes, output-path checks, content hashes.

Kept free of torch and onnx imports, so light paths (serving, sidecar checks) can use them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import UserError


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
    atomic_write_bytes(path, write)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def writable_output(path, example_name: str) -> Path:
    """Fail early (before slow work) when ``path`` cannot be written; create its folder.

    ``example_name`` completes the hint when ``path`` is a folder (e.g. ``model.onnx``).
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name such as {path / example_name}")
    blocker = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"cannot write {path}: {blocker} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {path.parent}: {e.strerror or e}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {path.parent}: permission denied")
    return path
