"""``serve``: PyTriton hosting our runner (PyTorch checkpoint or ONNX) under dynamic batching.

``served_model`` checks what the user gave and returns a runner factory (one runner per Triton
model instance); ``PyTritonServer`` binds it to a Triton Inference Server on explicit endpoints
(loopback by default, ``network``), with the Python-backend environment fix applied
(``environment``). The shipped binary on a packaged repository is ``process.TritonServerProcess``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .. import errors
from ..errors import UserError
from . import MODEL_NAME, require
from .environment import backend_env, replaced_environ
from .network import Endpoints
from .procfs import children, comm
from .process import wait_for_signal


# -- PyTriton: our runner behind Triton ------------------------------------------------------------
@dataclass
class ServedModel:
    """A runner factory plus what clients need to know about it."""

    make_runner: object           # () -> Runner; one per Triton model instance
    contract: dict
    threshold: float | None
    source: str


def served_model(checkpoint=None, onnx=None, threads: int | None = None) -> ServedModel:
    """--checkpoint (PyTorch runner) or --onnx (ONNX Runtime runner), checked now, built per instance.

    ``threads`` sets each ONNX Runtime instance's intra-op threads; PyTorch's thread count is
    process-wide and set once by the caller (the CLI), never by building a runner.
    """
    if (checkpoint is None) == (onnx is None):
        raise UserError("give exactly one of --checkpoint RUN_DIR or --onnx FILE")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if onnx is not None:
        from ..runners.onnx_runner import OnnxRunner, resolve_onnx

        files = resolve_onnx(onnx)
        if "whole" not in files:
            raise UserError(f"{onnx} is a --split export; serve the whole-graph export (per-stream feature caches "
                            "do not survive dynamic batching across cameras)")
        probe = OnnxRunner(onnx, providers=["CPUExecutionProvider"], threads=1)
        meta = probe.metadata
        thr = meta.get("threshold")
        return ServedModel(lambda: OnnxRunner(onnx, threads=threads), probe.contract.to_dict(),
                           float(thr) if thr is not None else None, f"onnx:{onnx}")
    errors.require("torch", "serve --checkpoint (the PyTorch runner)", "torch")
    from ..model.checkpoint import load_checkpoint
    from ..runners.torch_runner import TorchRunner

    ckpt = load_checkpoint(checkpoint)

    return ServedModel(lambda: TorchRunner(ckpt), ckpt.contract.to_dict(), ckpt.threshold, f"checkpoint:{checkpoint}")


class PyTritonServer:
    """Triton Inference Server through PyTriton, hosting our runner with dynamic batching.

    Inputs/outputs mirror the ONNX contract: ``clip`` (batch, T, C, H, W) float32 in, ``score_map``,
    ``pred_frame``, ``pred_motion``, ``frame_score`` out. The model config carries the input contract
    and alert threshold as parameters (``m2s2l_contract``, ``m2s2l_threshold``), like a packaged one.
    """

    def __init__(self, model: ServedModel, endpoints: Endpoints | None = None, *, name: str = MODEL_NAME,
                 max_batch: int = 8, instances: int = 1, queue_delay_us: int = 500, log_verbose: int = 0):
        if not 1 <= max_batch <= 1024:
            raise UserError(f"--max-batch must be between 1 and 1024, got {max_batch}")
        if not 1 <= instances <= 64:
            raise UserError(f"--instances must be between 1 and 64, got {instances}")
        if not 0 <= queue_delay_us <= 10_000_000:
            raise UserError(f"--queue-delay-us must be between 0 and 10000000, got {queue_delay_us}")
        self.model, self.name = model, name
        self.endpoints = endpoints or Endpoints.choose()
        self.max_batch, self.instances, self.queue_delay_us = max_batch, instances, queue_delay_us
        self.log_verbose = log_verbose
        self.triton = None

    @property
    def access_token(self) -> str | None:
        """PyTriton guards statistics/model-repository endpoints with this token (header triton-access-token)."""
        return self.triton.get_access_token() if self.triton is not None else None

    def _infer_fn(self, runner):
        import numpy as np
        from pytriton.decorators import batch

        @batch
        def infer(clip):
            out = runner.infer(clip)
            return {k: np.ascontiguousarray(out[k], dtype=np.float32).reshape(len(clip), *self._shapes[k])
                    for k in self._shapes}
        return infer

    def start(self) -> "PyTritonServer":
        import numpy as np
        require("pytriton", "serve")
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        c = self.model.contract
        sample = (c["clip_len"], c["channels"], c["height"], c["width"])
        self._shapes = {"score_map": (1, c["height"], c["width"]),
                        "pred_frame": (c["channels"], c["height"], c["width"]),
                        "pred_motion": (c["channels"], c["height"], c["width"]),
                        "frame_score": (1,)}
        runners = [self.model.make_runner() for _ in range(self.instances)]
        e = self.endpoints
        cfg = TritonConfig(http_address=e.host, http_port=e.http_port, grpc_address=e.host, grpc_port=e.grpc_port,
                           metrics_address=e.host, metrics_port=e.metrics_port, allow_gpu_metrics=False,
                           strict_readiness=True, exit_timeout_secs=5, log_verbose=self.log_verbose)
        self.triton = Triton(config=cfg)
        try:
            self.triton.bind(
                model_name=self.name, infer_func=[self._infer_fn(r) for r in runners],
                inputs=[Tensor(name="clip", dtype=np.float32, shape=sample)],
                outputs=[Tensor(name=k, dtype=np.float32, shape=s) for k, s in self._shapes.items()],
                config=ModelConfig(max_batch_size=self.max_batch,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=self.queue_delay_us)))
            self._add_parameters()
            with replaced_environ(backend_env()):
                self.triton.run()
        except BaseException:
            self.stop()
            raise
        return self

    def _add_parameters(self) -> None:
        """Put the contract and threshold into the generated config (PyTriton has no public hook for this)."""
        params = {"m2s2l_contract": json.dumps(self.model.contract, sort_keys=True), "m2s2l_source": self.model.source}
        if self.model.threshold is not None:
            params["m2s2l_threshold"] = repr(float(self.model.threshold))
        try:
            model = next(m for m in self.triton._model_manager.models if m.model_name == self.name)
            model._get_triton_model_config().backend_parameters.update(params)
        except (AttributeError, StopIteration) as e:
            raise RuntimeError(f"this nvidia-pytriton version does not expose model parameters as expected ({e})") from None

    def pids(self) -> list[int]:
        """The tritonserver process PyTriton started (child of this process), for socket checks."""
        return [p for p in children(os.getpid()) if comm(p) == "tritonserver"]

    def stop(self) -> None:
        triton, self.triton = self.triton, None
        if triton is not None:
            triton.stop()

    close = stop

    def serve_forever(self) -> None:
        """Block until Ctrl-C / SIGTERM or until the server dies, then stop it."""
        try:
            wait_for_signal(lambda: self.triton is not None and self.triton.is_alive())
        finally:
            self.stop()

    def __enter__(self) -> "PyTritonServer":
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False
