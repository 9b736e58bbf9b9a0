"""Serving on NVIDIA Triton Inference Server (not to be confused with OpenAI Triton kernels).

- ``repository``: ``package`` — standard Triton model repositories (onnxruntime, tensorrt_plan, python).
- ``server``: ``serve`` through PyTriton (``served_model``, ``PyTritonServer``); ``process``: the
  shipped ``tritonserver`` binary on a packaged repository; ``environment``: the Python-backend
  libpython fix; ``network``: endpoints, loopback binding; ``procfs``: what /proc says.
- ``client``: ``bench_streams`` — N concurrent camera streams against a server, with reconnection.
- ``stats``: what the server says about itself (batch sizes from its statistics and metrics).

Every module imports tritonclient / pytriton lazily; ``require`` turns a missing one into the one-line
UserError that names the pip extra.
"""

from __future__ import annotations

from .. import errors

MODEL_NAME = "m2s2l"
EXTRA = "pip install 'm2s2l-deploy[serve]'"


def require(module: str, what: str):
    """Import an optional serving dependency or raise a UserError naming the ``serve`` extra."""
    return errors.require(module, what, "serve")
