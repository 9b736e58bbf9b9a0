"""User-facing errors: raised for user mistakes, printed by the CLI as one line (no traceback)."""

from __future__ import annotations

import importlib


class UserError(Exception):
    """A mistake in what the user gave us (missing file, bad layout, corrupt data, ...)."""


class DataError(UserError):
    """A dataset, video or label file that cannot be read as promised."""


def require(module: str, what: str, extra: str):
    """Import an optional dependency, or say in one line which pip extra brings it.

    The toolkit installs without torch (``pip install "m2s2l-deploy[onnx]"`` benches, serves and
    packages ONNX models), so every path that needs torch, onnxruntime, TensorRT or PyTriton asks
    for it here instead of failing with an ImportError deep inside.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs {module.split('.')[0]}: pip install 'm2s2l-deploy[{extra}]'") from None
