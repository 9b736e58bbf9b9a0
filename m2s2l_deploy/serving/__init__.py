"""Serving on NVIDIA Triton Inference Server (DESIGN.md §10; not OpenAI Triton kernels).

- ``repository``: ``package`` — standard Triton model repositories (onnxruntime, tensorrt_plan, python).
- ``server``: ``serve`` through PyTriton, and the shipped ``tritonserver`` binary on a packaged
  repository; loopback binding and the Python-backend libpython fix live here.
- ``client``: ``bench_streams`` — N concurrent camera streams against a server, with reconnection.
- ``stats``: what the server says about itself (batch sizes from its statistics and metrics).

Every module imports tritonclient / pytriton lazily; ``require`` turns a missing one into the one-line
UserError that names the pip extra.
"""

from __future__ import annotations

import importlib

from ..errors import UserError

MODEL_NAME = "m2s2l"
EXTRA = "pip install 'm2s2l-deploy[serve]'"


def require(module: str, what: str):
    """Import an optional serving dependency or raise a UserError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs {module.split('.')[0]} ({EXTRA})") from None
