"""File helpers shared by every writer: atomic writes, the output-path check, content hashes.

Kept free of torch and onnx imports, so light paths (bench --onnx, serving, sidecar checks) can
use them.
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


def output_path(path, what: str = "output", suffixes: tuple[str, ...] | None = None,
                example_name: str | None = None) -> Path | None:
    """Fail before any slow work when ``path`` cannot be written; ``None`` passes through.

    The one check every writer makes on a user's output path: the suffix (when ``suffixes`` is
    given), not a folder (``example_name`` completes the hint, e.g. ``model.onnx``), and the
    nearest existing ancestor a writable folder. Nothing is created here; the atomic writers
    create missing folders when they write, so a refused run leaves no trace.
    """
    if path is None:
        return None
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{what} {path} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        hint = f" such as {path / example_name}" if example_name else ""
        raise UserError(f"{what} {path} is a folder; give a file name{hint}")
    ancestor = next(p for p in [path.parent, *path.parent.parents] if p.exists())
    if not ancestor.is_dir():
        raise UserError(f"cannot write {what} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {path}: {ancestor} is not writable")
    return path
