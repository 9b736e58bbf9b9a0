"""TensorRT runner: executes a plan built by ``m2s2l-deploy build-engine`` as a ``Runner``.

Before anything is loaded, ``preflight`` checks the plan against its JSON sidecar and the
machine, so every way a plan cannot run here is one UserError line:
- the sidecar is missing or describes another file; the plan was built from another checkpoint or
  ONNX than the one given; it is a split-graph plan (this runner runs whole-graph plans);
- no CUDA GPU (TensorRT plans run on NVIDIA GPUs only), or a GPU the plan does not target —
  TensorRT-RTX plans never run on compute capability 9.x/10.x (H100, B200);
- the backend that built it (``tensorrt`` or ``tensorrt_rtx``) is not installed, or another version.

Then the SelectiveScan plugin creator is registered (the plan stores only the plugin's
name/version/namespace/fields) and the plan is deserialised. Buffers are torch CUDA tensors:
the input is copied to the GPU, outputs are allocated with the shapes the context reports, and
``execute_async_v3`` runs on torch's current stream. Batches above the profile's maximum are
split; batches below its minimum are padded by repeating the last clip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract import InputContract
from ..engine import sidecar as sc
from ..errors import UserError
from .base import Runner


def cuda_device(device: str = "cuda") -> sc.DeviceInfo:
    """The CUDA device a plan would run on; UserError when there is none."""
    if not str(device).startswith("cuda"):
        raise UserError(f"TensorRT runs plans on CUDA devices only, not '{device}'")
    try:
        import torch
    except ImportError:
        raise UserError("the TensorRT runner needs PyTorch with CUDA for its buffers") from None
    if not torch.cuda.is_available():
        raise UserError("no CUDA GPU is visible: TensorRT plans run on NVIDIA GPUs only (use the ONNX Runtime "
                        "backend with the ONNX file on this machine)")
    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return sc.DeviceInfo(torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index)))


def preflight(plan, checkpoint=None, onnx=None, device: str = "cuda", device_info: sc.DeviceInfo | None = None,
              backend=None) -> tuple[dict, object]:
    """Every check that can refuse ``plan`` before TensorRT loads it; returns (sidecar, backend).

    ``device_info`` replaces the probe of the CUDA device (tests); ``backend`` a loaded Backend.
    """
    from ..engine.backend import load_backend

    plan = Path(plan)
    side = sc.load_sidecar(plan)
    ckpt_sha, ckpt_name = None, "the checkpoint"
    if checkpoint is not None:
        from ..model.checkpoint import Checkpoint, load_checkpoint
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, with_weights=False)
        ckpt_sha, ckpt_name = ckpt.weights_sha256, str(ckpt.path)
    sc.check_model(side, checkpoint_sha256=ckpt_sha, checkpoint_name=ckpt_name, onnx=onnx, plan_name=str(plan))
    if side.get("model", {}).get("graph", "whole") != "whole":
        raise UserError(f"{plan} is a split-graph ({side['model']['graph']}) plan; the TensorRT runner runs "
                        "whole-graph plans")
    info = device_info if device_info is not None else cuda_device(device)
    sc.check_device(side, info, plan_name=str(plan))
    be = backend if backend is not None else load_backend(side.get("backend", {}).get("name"))
    sc.check_backend(side, be.name, be.version, plan_name=str(plan))
    return side, be


class TensorRTRunner(Runner):
    """Runner over a TensorRT / TensorRT-RTX plan; see the module docstring."""

    def __init__(self, plan_path, checkpoint=None, device: str = "cuda", onnx=None):
        import torch

        from ..engine.plugin import register_plugin

        self.plan = Path(plan_path)
        self.sidecar, self.backend = preflight(self.plan, checkpoint=checkpoint, onnx=onnx, device=device)
        model = self.sidecar["model"]
        self.contract = InputContract.from_dict(model["contract"])
        self.output_names = list(model.get("output_names", []))
        self.input_name = (model.get("input_names") or ["clip"])[0]
        shapes = self.sidecar["profile"][self.input_name]
        self.min_batch, self.max_batch = shapes["min"][0], shapes["max"][0]
        self.device = torch.device(device)
        trt = self.backend.trt
        if self.sidecar.get("plugins"):
            register_plugin(trt)                     # before deserialising: the plan names the plugin only
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise UserError(f"{self.backend.label} could not load {self.plan} on {torch.cuda.get_device_name(self.device)}")
        self.context = self.engine.create_execution_context()
        self._dtypes = {name: self._torch_dtype(self.engine.get_tensor_dtype(name)) for name in self.output_names}
        self.precision, self.precision_source = self.sidecar["precision"], "engine sidecar"
        if self.sidecar.get("threshold") is not None:
            self.threshold, self.threshold_source = float(self.sidecar["threshold"]), "engine sidecar"
        self.name = f"tensorrt-{self.precision}-{model.get('scan_form', '?')}"

    def _torch_dtype(self, dtype):
        import torch
        trt = self.backend.trt
        return {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64}[dtype]

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        x = torch.from_numpy(batch).to(self.device)
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        outs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to execute {self.plan}")
        stream.synchronize()
        return {k: v.float().cpu().numpy() for k, v in outs.items()}

    def _infer(self, clips: np.ndarray) -> dict[str, np.ndarray]:
        clips = np.ascontiguousarray(clips, dtype=np.float32)
        parts = []
        for start in range(0, len(clips), self.max_batch):
            chunk = clips[start:start + self.max_batch]
            n = len(chunk)
            if n < self.min_batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.min_batch - n, axis=0)])
            parts.append({k: v[:n] for k, v in self._run(np.ascontiguousarray(chunk)).items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in self.output_names}

    def describe(self) -> dict:
        return {"runner": self.name, "device": str(self.device)}

    def close(self) -> None:
        self.context = None
        self.engine = None
