"""ONNX Runtime runner: runs an exported file (whole graph or --split pair) under the Runner protocol.

Everything it needs comes from the ONNX metadata (input contract, names, scan form), so a
deployment ships the .onnx file(s) alone; a checkpoint, when given, is only checked against the
recorded weights hash.

A --split export (NAME.encoder.onnx + NAME.head.onnx) runs as a stream: consecutive clips that
overlap by T-1 frames (sliding windows, as ``jobs.clip_loop`` makes them) reuse the
features of the frames already encoded, also across ``infer`` calls, so each frame is encoded
once. Frames are matched by exact equality, so any other batch still gives the right answer.

Plugin exports (``--scan plugin``): whenever onnxruntime-extensions and Numba (or torch) are
importable, the runner registers ``scan_op``'s compiled ``ai.onnx.contrib::SelectiveScan`` op and
ORT runs it instead of the node's model-local function body (``extensions=None``, the default;
``True`` insists on it, ``False`` runs the function body). That makes the plugin form the fastest
CPU form; loop exports are unaffected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..contract import InputContract
from ..errors import UserError
from . import scan_op
from .base import Runner


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


def session_options(threads: int | None, quiet: bool = False, extensions: bool = False):
    """ORT session options of this runner (also used by benchmarks/ to profile what the runner runs)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if extensions:
        # While the scan op computes on Numba's threads, ORT's idle workers must not spin on the same cores.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    has it, else CPU); threads: intra-op threads, also the scan op's (default: ORT's choice, the
    scan op then uses every core); extensions: run plugin nodes with the compiled SelectiveScan op
    (None: whenever the graph has them and the op is available; True: required; False: never).
    """

    def __init__(self, onnx_path, checkpoint=None, providers=None, threads: int | None = None,
                 extensions: bool | None = None):
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
        from ..export.scan_graph import OP_TYPE
        has_scan_nodes = any(n.op_type == OP_TYPE for g in graphs.values() for n in g.graph.node)
        del graphs
        if self.metadata.get("threshold") is not None:
            self.threshold = float(self.metadata["threshold"])
            self.threshold_source = "ONNX metadata: the checkpoint's calibration"
        self.output_names = json.loads(self.metadata["output_names"])
        self.scan_form = self.metadata.get("scan_form", "?")
        if checkpoint is not None:
            self._check_checkpoint(checkpoint)
        if extensions is None:
            extensions = has_scan_nodes and scan_op.available_kernel() is not None
        self.scan_kernel = scan_op.register().kernel if extensions else None
        self.threads = threads
        available = ort.get_available_providers()
        wanted = providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]   # by availability
        self.providers = [p for p in wanted if p in available]
        if not self.providers:
            raise UserError(f"none of the providers {providers} is available (have {', '.join(available)})")
        so = session_options(threads, quiet=True, extensions=extensions)
        self.sessions = {k: ort.InferenceSession(str(p), so, providers=self.providers) for k, p in self.files.items()}
        kernel = f"+{self.scan_kernel}" if self.scan_kernel else ""
        self.name = f"onnxruntime-{'split-' if self.split else ''}{self.scan_form}{kernel}"
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
        with scan_op.calls_use_threads(self.threads):
            return self._run(clips)

    def _run(self, clips: np.ndarray) -> dict[str, np.ndarray]:
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
        out = {"runner": self.name, "providers": list(self.providers), "threads": self.threads or os.cpu_count(),
               "threads_source": "intra_op_num_threads" if self.threads else "ONNX Runtime's default (all cores)"}
        if self.scan_kernel:
            out.update(scan_kernel=self.scan_kernel, scan_threads=scan_op.launch_threads(self.threads),
                       scan_first_call_s=scan_op.first_call_s())
        return out

    def close(self) -> None:
        self.sessions.clear()
