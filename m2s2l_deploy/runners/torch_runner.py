"""PyTorch runner (CPU or CUDA): the reference every other runner is compared with.

On CUDA it is also the fast path without TensorRT: the selective scans run on the OpenAI-Triton
kernel (``ops.scan.selective_scan_fn`` picks it under ``inference_mode``), ``dtype`` fp16/bf16 runs
the convolutions and matmuls under autocast (norms, softmax-like reductions, the score and the scan
state stay fp32), and ``cuda_graph`` records the whole forward once per input shape and replays
it, which removes the launch overhead of the model's hundreds of small kernels at batch 1.
``compile`` runs the forward through ``torch.compile`` (Inductor fuses the norms, casts, copies and
pointwise ops between the scans): on an H100 `paper` batch 1 with a graph went from 4.6 to 3.1 ms
per clip, at the price of about a minute of compilation per input shape (docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..model.checkpoint import CONFIG, Checkpoint, load_checkpoint
from ..model.m2s2l import OUTPUT_NAMES
from .base import Runner

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_device(name: str) -> torch.device:
    """A device for PyTorch work here (cpu, cuda, cuda:N), or a one-line error: the runner and training share it."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (use cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unknown device '{name}' (use cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but PyTorch sees no CUDA GPU here (use device cpu)")
    return device


class TorchRunner(Runner):
    """``infer(clips)`` with the PyTorch model.

    device: "cpu", "cuda" or "cuda:N". dtype: "fp32" | "fp16" | "bf16" (16-bit only on CUDA,
    through autocast). cuda_graph: capture one CUDA graph per input shape (batch) on first use and
    replay it (CUDA only; the input is copied into the graph's static buffer each call).
    compile: ``torch.compile`` the forward, once per input shape on first use (CUDA only: it was
    measured there; on a small CPU the compilation takes minutes and was not measured).
    scan_form: one of ``ops.scan.SCAN_FORMS`` for every scan of the model (None: the dispatcher's
    choice by device and autograd).
    """

    def __init__(self, checkpoint: Checkpoint | str, device: str = "cpu", extras: bool = False,
                 dtype: str = "fp32", cuda_graph: bool = False, compile: bool = False,
                 scan_form: str | None = None):
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
        self.device = torch_device(device)
        if self.device.type != "cuda" and (dtype != "fp32" or cuda_graph or compile):
            wanted = " and ".join(x for x in (f"dtype {dtype}" if dtype != "fp32" else "",
                                              "CUDA graphs" if cuda_graph else "",
                                              "torch.compile" if compile else "") if x)
            raise UserError(f"{wanted}: CUDA only, and this runner is on {self.device} (use device cuda or fp32)")
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.contract = self.checkpoint.contract
        self.model = self.checkpoint.build_model().to(self.device).use_scan_form(scan_form)
        self.scan_form = scan_form
        self.extras = extras
        self.dtype = dtype
        self.cuda_graph = cuda_graph
        self._outputs = torch.compile(self.model.outputs, dynamic=False) if compile else self.model.outputs
        self._graphs: dict[tuple, tuple] = {}
        self._pool = None
        suffix = "" if dtype == "fp32" else f"-{dtype}"
        self.name = f"torch-{self.device.type}{suffix}{'-compile' if compile else ''}{'-graph' if cuda_graph else ''}"
        self.precision, self.precision_source = dtype, "PyTorch runner dtype"
        if self.checkpoint.threshold is not None:
            self.threshold = float(self.checkpoint.threshold)
            self.threshold_source = f"checkpoint calibration ({self.checkpoint.path / CONFIG})"
        self.component_stats = (self.model.score_mean.cpu().numpy(), self.model.score_std.cpu().numpy())
        self.component_names = self.model.component_names
        self.score_tau = self.model.cfg.score_tau

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's deployed outputs for a device tensor (no host synchronisation inside)."""
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=DTYPES[self.dtype],
                                                    enabled=self.dtype != "fp32"):
            out = self._outputs(x)
            wanted = list(OUTPUT_NAMES) + (["components"] if self.extras else [])
            return {k: out[k] for k in wanted}

    def _replay(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run through the CUDA graph recorded for x's shape (recorded on first use)."""
        key = tuple(x.shape)
        if key not in self._graphs:
            static_in = x.clone()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):           # compiles the Triton kernels, warms cuDNN/cuBLAS
                    self._forward(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                static_out = self._forward(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def run_device(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The outputs for a clip batch already on the runner's device, left on the device.

        With ``cuda_graph`` the returned tensors are the graph's static outputs: the next call
        overwrites them. Used by ``infer`` and by benchmarks that time the model without the copies.
        """
        return self._replay(x) if self.cuda_graph else self._forward(x)

    def _infer(self, clips: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(clips, dtype=np.float32)).to(self.device)
        return {k: v.float().cpu().numpy() for k, v in self.run_device(x).items()}

    def describe(self) -> dict:
        out = {"runner": self.name, "device": str(self.device)}
        if self.device.type == "cpu":
            from ..ops import scan
            form = self.scan_form or scan.scan_form_for(on_cuda=False, needs_grad=False)
            out.update(threads=torch.get_num_threads(), threads_source="torch.set_num_threads (process-wide)",
                       scan_kernel=form)
            if form == "numba":
                out["scan_threads"] = torch.get_num_threads()
        return out

    def close(self) -> None:
        self._graphs.clear()
