"""One place that turns "what the user gave" (checkpoint, ONNX file, engine plan) into a runner.

Every job that runs a model (bench, validate, serving) calls ``make_runner`` so the same options
mean the same thing everywhere, and optional backends are imported only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import UserError, require

BACKENDS = ("torch", "onnxruntime", "tensorrt")


@dataclass
class RunnerSpec:
    """What a user gave to pick a runner (the CLI's model options), built later by ``make``.

    Jobs take a spec when they check cheap things first (a bad video, an unwritable output)
    and load the model only after; see ``make_runner`` for what each field means.
    """

    checkpoint: Path | None = None
    onnx: Path | None = None
    engine: Path | None = None
    backend: str | None = None
    device: str = "cpu"
    threads: int | None = None
    dtype: str = "fp32"
    cuda_graph: bool = False
    compile: bool = False

    def make(self):
        return make_runner(**{f.name: getattr(self, f.name) for f in fields(self)})


def infer_backend(checkpoint=None, onnx=None, engine=None, backend: str | None = None) -> str:
    """The backend the given files imply; a contradiction is a UserError."""
    if onnx is not None and engine is not None:
        raise UserError("give --onnx or --engine, not both")
    implied = "onnxruntime" if onnx is not None else "tensorrt" if engine is not None else "torch"
    if backend is not None:
        backend = backend.strip().lower().replace("-", "").replace("_", "")
        backend = {"ort": "onnxruntime", "onnx": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}.get(backend, backend)
        if backend not in BACKENDS:
            raise UserError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
        if backend != implied:
            need = {"onnxruntime": "--onnx FILE", "tensorrt": "--engine PLAN", "torch": "--checkpoint RUN without --onnx/--engine"}
            raise UserError(f"backend '{backend}' needs {need[backend]}")
    if implied == "torch" and checkpoint is None:
        raise UserError("nothing to run: give --checkpoint RUN, --onnx FILE or --engine PLAN")
    return implied


def _check_device(device: str) -> str:
    device = str(device).strip().lower()
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown device '{device}' (use cpu or cuda)")
    return device


def make_runner(checkpoint=None, onnx=None, engine=None, backend: str | None = None, device: str = "cpu",
                threads: int | None = None, dtype: str = "fp32", cuda_graph: bool = False, compile: bool = False):
    """A Runner for the given model form.

    - ``engine``: ``TensorRTRunner(plan, checkpoint, device)`` (tensorrt or tensorrt_rtx, GPU only);
    - ``onnx``: ``OnnxRunner`` with providers by availability (CUDA first when device is cuda);
      a ``--split`` pair runs as the streaming runner; ``checkpoint`` is checked against the
      weights hash recorded at export;
    - otherwise ``TorchRunner(checkpoint, device, dtype=, cuda_graph=, compile=)`` (fp16/bf16, CUDA
      graphs and torch.compile are CUDA-only; the torch runner refuses them on CPU in one line).

    ``threads`` sets ONNX Runtime's intra-op threads of this runner's sessions. PyTorch's thread
    count is process-wide: the CLI sets it once per command, and building a runner never changes it.
    """
    kind = infer_backend(checkpoint, onnx, engine, backend)
    device = _check_device(device)
    torch_only = [name for name, on in (("--dtype " + str(dtype), dtype != "fp32"), ("--cuda-graph", cuda_graph),
                                        ("--compile", compile)) if on]
    if kind != "torch" and torch_only:
        raise UserError(f"{', '.join(torch_only)}: options of the PyTorch runner, not of the {kind} runner "
                        "(an ONNX or engine file carries its own precision)")
    if kind == "tensorrt":
        if device == "cpu":
            device = "cuda"
        try:
            from .tensorrt_runner import TensorRTRunner
        except ImportError as e:
            raise UserError(f"the TensorRT runner is not available ({e}); "
                            "pip install 'm2s2l-deploy[tensorrt]'") from None
        return TensorRTRunner(Path(engine), checkpoint=checkpoint, device=device)
    if kind == "onnxruntime":
        try:
            import onnxruntime as ort
            from .onnx_runner import OnnxRunner
        except ImportError:
            raise UserError("onnxruntime is not installed (pip install 'm2s2l-deploy[onnx]')") from None
        wanted = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError("device cuda asked for, but this onnxruntime has no CUDAExecutionProvider "
                                "(install onnxruntime-gpu instead of onnxruntime)")
        return OnnxRunner(Path(onnx), checkpoint=checkpoint, providers=wanted, threads=threads)
    require("torch", "the PyTorch runner (--checkpoint without --onnx/--engine)", "torch")
    from .torch_runner import TorchRunner
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise UserError("device cuda asked for, but PyTorch sees no CUDA GPU here")
    return TorchRunner(checkpoint, device=device, dtype=dtype, cuda_graph=cuda_graph, compile=compile)


def describe_machine(runner=None) -> dict:
    """Where a measurement ran: CPU, cores, GPU if any, library versions, the runner's providers."""
    import os
    import platform

    info = {"platform": platform.platform(), "machine": platform.machine(),
            "cpu": cpu_name() or platform.processor() or "unknown", "cpu_count": os.cpu_count(),
            "python": platform.python_version()}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if runner is not None:
        info.update(runner.describe())
    return info


def cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None
