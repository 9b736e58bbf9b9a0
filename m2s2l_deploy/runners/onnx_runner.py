"""ONNX Runtime runner: runs an exported file (whole graph or --split pair) under the Runner protocol.

Everything it needs comes from the ONNX metadata (input contract, names, scan form), so a
deployment ships the .onnx file(s) alone; a checkpoint, when given, is only checked against the
recorded weights hash.

A --split export (NAME.encoder.onnx + NAME.head.onnx) runs as a stream: consecutive clips that
overlap by T-1 frames (sliding windows, as ``jobs.clip_loop`` makes them) reuse the
features of the frames already encoded, also across ``infer`` calls, so each frame is encoded
once. Frames are matched by exact equality, so any other batch still gives the right answer.

``extensions=True`` registers an onnxruntime-extensions Python op for ``ai.onnx.contrib::
SelectiveScan`` (plugin exports): ORT then runs that op (PyTorch's CPU scan) instead of the
model-local function body.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..contract import InputContract
from ..errors import UserError
from .base import Runner

_EXT_OP = None  # the registered onnxruntime-extensions op (one per process)


def extensions_available() -> bool:
    try:
        import onnxruntime_extensions  # noqa: F401
    except ImportError:
        return False
    return True


def register_selective_scan_op():
    """Register ``ai.onnx.contrib::SelectiveScan`` as an onnxruntime-extensions Python op (once).

    The op computes with ``ops.scan.selective_scan_cpu``. Returns the Python function; its ``.calls``
    counts invocations, so tests can tell it ran instead of the function body.
    """
    global _EXT_OP
    if _EXT_OP is not None:
        return _EXT_OP
    try:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
    except ImportError:
        raise UserError("onnxruntime-extensions is not installed (pip install onnxruntime-extensions); "
                        "without it the plugin node runs through its ONNX function body") from None
    import torch

    from ..export.scan_graph import OP_TYPE
    from ..ops.scan import selective_scan_cpu

    def selective_scan(u, delta, A, B, C, D, delta_bias, **attrs):
        selective_scan.calls += 1
        t = [torch.from_numpy(np.ascontiguousarray(x)) for x in (u, delta, A, B, C, D, delta_bias)]
        with torch.inference_mode():
            y = selective_scan_cpu(*t[:5], t[5], None, t[6], bool(attrs.get("delta_softplus", 1)))
        return y.numpy()

    selective_scan.calls = 0
    # onnxruntime-extensions registers Python ops in its domain, ai.onnx.contrib: the plugin node's
    onnx_op(op_type=OP_TYPE, inputs=[PyCustomOpDef.dt_float] * 7, outputs=[PyCustomOpDef.dt_float],
            attrs={"delta_softplus": PyCustomOpDef.dt_int64})(selective_scan)
    _EXT_OP = selective_scan
    return _EXT_OP


def resolve_onnx(path) -> dict[str, Path]:
    """A whole-graph file, or either half of a split pair (NAME.onnx also finds NAME.{encoder,head}.onnx).

    Returns {"whole": p} or {"encoder": p, "head": p}.
    """
    path = Path(path)
    if not path.exists():
        stem = path.name[:-5] if path.name.endswith(".onnx") else path.name
        enc = path.with_name(f"{stem}.encoder.onnx")
        if enc.is_file():
            path = enc
        else:
            raise UserError(f"ONNX file {path} does not exist")
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    meta = _metadata(path)
    role = meta.get("graph", "whole")
    if role == "whole":
        return {"whole": path}
    other_role = "head" if role == "encoder" else "encoder"
    other = path.with_name(meta.get(f"split_{other_role}", ""))
    if not other.is_file():
        raise UserError(f"{path} is the {role} of a split export; its {other_role} {other} is missing")
    if _metadata(other).get("split_id") != meta.get("split_id"):
        raise UserError(f"{path} and {other} come from different exports (split_id differs)")
    return {role: path, other_role: other}


def _load(path: Path):
    """The ONNX model of an exported file (parsed with onnx; weights stay on disk if external)."""
    import onnx
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors have no common public base class
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__})") from None


def _metadata(path: Path, model=None) -> dict[str, str]:
    """metadata_props of an exported file; a file without our input contract is a UserError."""
    model = model if model is not None else _load(path)
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("format", "").split("/")[:2] != ["m2s2l-deploy", "onnx"] or "contract" not in meta:
        raise UserError(f"{path} was not exported by m2s2l-deploy (no input contract in its metadata)")
    return meta


def graph_precision(models) -> tuple[str, str]:
    """(precision, how it was read) from the graphs themselves: Q/DQ nodes -> int8, float16
    tensors -> fp16, else fp32. For ONNX files written before the builder recorded ``precision``
    in the metadata (and by other tools)."""
    import onnx

    fp16 = onnx.TensorProto.FLOAT16
    found = "fp32"
    for model in models:
        ops = {n.op_type for n in model.graph.node}
        if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}:
            return "int8", "ONNX graph (Q/DQ nodes)"
        if any(t.data_type == fp16 for t in model.graph.initializer) or any(
                n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute)
                for n in model.graph.node):
            found = "fp16"
    return found, "ONNX graph (" + ("float16 tensors" if found == "fp16" else "no reduced-precision tensors") + ")"


def _options(threads: int | None, quiet: bool = False, extensions: bool = False):
    import onnxruntime as ort
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if quiet:
        so.log_severity_level = 3
    if extensions:
        from onnxruntime_extensions import get_library_path
        so.register_custom_ops_library(get_library_path())
    return so


class OnnxRunner(Runner):
    """Runner over ONNX Runtime.

    providers: ORT execution providers in order of preference (default: CUDA when this ORT build
    has it, else CPU); threads: intra-op threads (default ORT's choice); extensions: run plugin
    nodes with the onnxruntime-extensions Python op.
    """

    def __init__(self, onnx_path, checkpoint=None, providers=None, threads: int | None = None,
                 extensions: bool = False):
        import onnxruntime as ort

        self.files = resolve_onnx(onnx_path)
        self.split = "encoder" in self.files
        main = self.files.get("whole") or self.files["head"]
        graphs = {role: _load(p) for role, p in self.files.items()}
        self.metadata = _metadata(main, graphs["whole" if "whole" in graphs else "head"])
        self.contract = InputContract.from_dict(json.loads(self.metadata["contract"]))
        if self.metadata.get("precision"):
            self.precision, self.precision_source = self.metadata["precision"].lower(), "ONNX metadata"
        else:
            self.precision, self.precision_source = graph_precision(graphs.values())
        del graphs
        if self.metadata.get("threshold") is not None:
            self.threshold = float(self.metadata["threshold"])
            self.threshold_source = "ONNX metadata: the checkpoint's calibration"
        self.output_names = json.loads(self.metadata["output_names"])
        self.scan_form = self.metadata.get("scan_form", "?")
        if checkpoint is not None:
            self._check_checkpoint(checkpoint)
        if extensions:
            register_selective_scan_op()
        available = ort.get_available_providers()
        wanted = providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]   # by availability
        self.providers = [p for p in wanted if p in available]
        if not self.providers:
            raise UserError(f"none of the providers {providers} is available (have {', '.join(available)})")
        so = _options(threads, quiet=True, extensions=extensions)
        self.sessions = {k: ort.InferenceSession(str(p), so, providers=self.providers) for k, p in self.files.items()}
        self.name = f"onnxruntime-{'split-' if self.split else ''}{self.scan_form}{'+ext' if extensions else ''}"
        self._last = None   # split streaming: (last clip, its feat2, its feat3)
        self.frames_encoded = 0

    def _check_checkpoint(self, checkpoint) -> None:
        from ..model.checkpoint import Checkpoint, load_checkpoint
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, with_weights=False)
        want = self.metadata.get("checkpoint_sha256")
        if want and ckpt.weights_sha256 != want:
            raise UserError(f"{self.files.get('whole') or self.files['head']} was exported from another checkpoint "
                            f"than {ckpt.path} (weights sha256 differs)")

    def _infer(self, clips: np.ndarray) -> dict[str, np.ndarray]:
        clips = np.ascontiguousarray(clips, dtype=np.float32)
        if not self.split:
            out = self.sessions["whole"].run(self.output_names, {"clip": clips})
        else:
            feat2, feat3 = self._stream_features(clips)
            out = self.sessions["head"].run(self.output_names, {"clip": clips, "feat2": feat2, "feat3": feat3})
        return dict(zip(self.output_names, out))

    def encode_frames(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split exports: (N, C, H, W) frames -> their feat2, feat3."""
        self.frames_encoded += len(frames)
        return tuple(self.sessions["encoder"].run(["feat2", "feat3"], {"frames": np.ascontiguousarray(frames)}))

    def _stream_features(self, clips: np.ndarray):
        """Features (B, T, ...) of every clip's frames, encoding only frames not seen in the clip before."""
        b, t = clips.shape[:2]
        rows = np.empty((b, t), dtype=np.int64)
        new_frames, table2, table3 = [], [], []
        prev_clip, prev_rows = None, None
        if self._last is not None and self._last[0].shape == clips.shape[1:]:
            prev_clip, prev_rows = self._last[0], np.arange(t)
            table2.append(self._last[1])
            table3.append(self._last[2])
        n_known = t if prev_clip is not None else 0
        for i, clip in enumerate(clips):
            if prev_clip is not None and np.array_equal(clip[:-1], prev_clip[1:]):
                rows[i, :-1] = prev_rows[1:]
                rows[i, -1] = n_known + len(new_frames)
                new_frames.append(clip[-1])
            else:
                rows[i] = n_known + len(new_frames) + np.arange(t)
                new_frames.extend(clip)
            prev_clip, prev_rows = clip, rows[i]
        if new_frames:
            f2, f3 = self.encode_frames(np.stack(new_frames))
            table2.append(f2)
            table3.append(f3)
        feat2, feat3 = np.concatenate(table2)[rows], np.concatenate(table3)[rows]
        self._last = (clips[-1].copy(), feat2[-1], feat3[-1])
        return feat2, feat3

    def reset_stream(self) -> None:
        """Split exports: the next clip starts a new stream (no features reused)."""
        self._last = None

    def describe(self) -> dict:
        return {"runner": self.name, "providers": list(self.providers)}

    def close(self) -> None:
        self.sessions.clear()
