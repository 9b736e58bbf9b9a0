"""``m2s2l-deploy export``: a checkpoint to a checked, self-describing ONNX file.

How: every ``ScanOp`` of the model is routed, for the duration of the export only, through an
autograd Function whose ``symbolic`` emits one intermediate node
``ai.onnx.contrib::SelectiveScan(u, delta, A, B, C, D, delta_bias)`` (B/C always grouped,
attributes ``delta_softplus`` and the static ``length``). The model is traced once with PyTorch's
TorchScript exporter (``dynamo=False``: it takes the symbolic as given and keeps the batch axis
dynamic), then ``scan_graph.rewrite_scans`` turns each node into the chosen form (loop, chunked or
plugin). The result is checked (``onnx.checker`` with ``full_check`` and strict shape inference),
given metadata that a runner needs (input contract, names, checkpoint hash, scan form) and written
atomically.

``--split`` writes a per-frame encoder (frames -> the granularity-2 and -3 token grids the
temporal encoders read) and a clip head (clip + those grids for its T frames -> the 4 outputs), so
a stream encodes each frame once. Both halves reuse the model's own code: the head is
``M2S2L.forward`` with the spatial encoder replaced by a lookup of the given features.
"""

from __future__ import annotations

import io
import json
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from .. import __version__
from ..errors import UserError
from ..files import atomic_write_bytes, output_path
from ..model.checkpoint import Checkpoint, load_checkpoint
from ..model.m2s2l import INPUT_NAME, OUTPUT_NAMES, M2S2L
from . import scan_graph

DEFAULT_OPSET = 17
MIN_OPSET = 17
MAX_OPSET = 20          # the TorchScript exporter's limit in torch 2.13
NORMALISATION = "x/127.5-1"
FORMAT = "m2s2l-deploy/onnx/1"
SPLIT_INPUTS = ("frames",)
SPLIT_FEATURES = ("feat2", "feat3")


# -- the intermediate scan node ------------------------------------------------------------------
class _ScanNode(torch.autograd.Function):
    """Exports as one SelectiveScan node; while tracing it returns a placeholder of the right shape.

    The traced values after a scan never reach the ONNX graph (no Python branch of the model reads
    them), and computing the real scan under the tracer records every one of its per-step ops:
    minutes and gigabytes for the paper preset, for nothing.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, length):
        return torch.zeros_like(u)

    @staticmethod
    def symbolic(g, u, delta, A, B, C, D, delta_bias, length):
        node = g.op(f"{scan_graph.DOMAIN}::{scan_graph.OP_TYPE}", u, delta, A, B, C, D, delta_bias,
                    delta_softplus_i=1, length_i=length)
        return node.setType(u.type())


def _scan_forward(u, delta, A, B, C, D, delta_bias):
    """ScanOp.forward during export: grouped B/C, static length passed as a Python int."""
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    return _ScanNode.apply(u, delta, A, B, C, D, delta_bias, int(u.shape[-1]))


@contextmanager
def scan_nodes(model: M2S2L):
    """Route every scan site of ``model`` through ``_ScanNode`` until the block ends."""
    sites = model.scan_sites()
    for site in sites:
        site.forward = _scan_forward
    try:
        yield len(sites)
    finally:
        for site in sites:
            del site.forward


# -- graphs for --split ---------------------------------------------------------------------------
class FrameEncoder(nn.Module):
    """frames (N, C, H, W) -> feat2 (N, H/2p, W/2p, d2), feat3 (N, H/4p, W/4p, d3)."""

    def __init__(self, model: M2S2L):
        super().__init__()
        self.model = model

    def forward(self, frames):
        _, feat2, feat3 = self.model.spatial(frames)
        return feat2, feat3


class _GivenFeatures(nn.Module):
    """Stands in for the spatial encoder: returns features computed beforehand (per frame)."""

    def __init__(self, feat2, feat3, spatial, encoded: tuple[int, ...]):
        super().__init__()
        self.feats = (feat2, feat3)
        self.encoded = list(encoded)
        self.first_stage = spatial.first_stage  # the target frame's fine grid is computed in the head

    def forward(self, frames):
        # the model asks for the frames it encodes (ModelConfig.encoded_frames): all T, the T-1
        # history frames, or a sparse history; the features come for all T, so pick those
        feat2, feat3 = self.feats
        return None, feat2[:, self.encoded].flatten(0, 1), feat3[:, self.encoded].flatten(0, 1)


class ClipHead(nn.Module):
    """clip (B, T, C, H, W) + feat2/feat3 (B, T, ...) -> the 4 outputs, as ``M2S2L.forward``.

    The clip still enters because the score compares the predictions with its last two frames.
    """

    def __init__(self, model: M2S2L):
        super().__init__()
        self.model = model

    def forward(self, clip, feat2, feat3):
        spatial = self.model.spatial
        self.model.spatial = _GivenFeatures(feat2, feat3, spatial, self.model.cfg.encoded_frames())
        try:
            return self.model(clip)
        finally:
            self.model.spatial = spatial


# -- export ---------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    paths: list[Path]
    scan_form: str
    scan_sites: int
    nodes: dict[str, int] = field(default_factory=dict)    # file name -> node count (subgraphs included)


def _trace(module: nn.Module, args: tuple, input_names, output_names, dynamic: dict, opset: int) -> onnx.ModelProto:
    """TorchScript export to memory; the exporter's deprecation chatter is silenced."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic or None,
                          custom_opsets={scan_graph.DOMAIN: 1}, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _check(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    """onnx.checker (full) and strict shape inference; returns the model with inferred shapes."""
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise RuntimeError(f"exported {what} graph fails the ONNX checks: {e}") from e


def _metadata(ckpt: Checkpoint, scan: str, opset: int, batch, chunk: int, graph: str, inputs, outputs,
              extra: dict | None = None) -> dict[str, str]:
    cfg, contract = ckpt.model_config, ckpt.contract
    meta = {
        "format": FORMAT,
        "graph": graph,
        "preset": cfg.preset,
        "input_size": f"{contract.height}x{contract.width}",
        "clip_len": str(contract.clip_len),
        "channels": str(contract.channels),
        "normalisation": NORMALISATION,
        "contract": json.dumps(contract.to_dict(), sort_keys=True),
        "model_config": json.dumps(cfg.to_dict(), sort_keys=True),
        "checkpoint_sha256": ckpt.weights_sha256,
        "scan_form": scan,
        "opset": str(opset),
        "batch": str(batch),
        "toolkit_version": __version__,
        "input_names": json.dumps(list(inputs)),
        "output_names": json.dumps(list(outputs)),
    }
    if scan == "chunked":
        meta["scan_chunk"] = str(chunk)
    if scan == "plugin":
        meta["plugin"] = json.dumps({"op_type": scan_graph.OP_TYPE, "domain": scan_graph.DOMAIN,
                                     "plugin_namespace": scan_graph.PLUGIN_NAMESPACE,
                                     "plugin_version": scan_graph.PLUGIN_VERSION})
    threshold = ckpt.threshold
    if threshold is not None:
        meta["threshold"] = repr(float(threshold))
    meta.update(extra or {})
    return meta


def _finish(model: onnx.ModelProto, scan: str, chunk: int, meta: dict, what: str) -> tuple[onnx.ModelProto, int]:
    sites = scan_graph.rewrite_scans(model, scan, chunk=chunk)
    model.producer_name, model.producer_version = "m2s2l-deploy", __version__
    model.doc_string = f"M2S2L video anomaly detector ({what}), selective scan as '{scan}'"
    onnx.helper.set_model_props(model, meta)
    _check(model, what)
    return model, sites


def _save(model: onnx.ModelProto, path: Path) -> None:
    data = model.SerializeToString()
    try:
        atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(data))
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def split_paths(output: Path) -> tuple[Path, Path]:
    """export/NAME.onnx -> (export/NAME.encoder.onnx, export/NAME.head.onnx)."""
    output = Path(output)
    stem = output.name[:-5] if output.name.endswith(".onnx") else output.name
    return output.with_name(f"{stem}.encoder.onnx"), output.with_name(f"{stem}.head.onnx")


def default_output(ckpt: Checkpoint, scan: str) -> Path:
    return Path("export") / f"m2s2l-{ckpt.model_config.preset}-{scan}.onnx"


def _validate(scan: str, opset: int, batch, chunk: int):
    if scan not in scan_graph.SCAN_FORMS:
        raise UserError(f"unknown --scan '{scan}' (choose from {', '.join(scan_graph.SCAN_FORMS)})")
    top = min(MAX_OPSET, onnx.defs.onnx_opset_version())
    if not MIN_OPSET <= opset <= top:
        raise UserError(f"--opset must be between {MIN_OPSET} and {top}, got {opset}")
    if batch != "dynamic" and (not isinstance(batch, int) or batch < 1):
        raise UserError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")
    if chunk < 1:
        raise UserError(f"--chunk must be >= 1, got {chunk}")


def parse_batch(text: str):
    """CLI value of --batch: 'dynamic' or N >= 1."""
    if str(text).strip().lower() == "dynamic":
        return "dynamic"
    try:
        n = int(text)
    except ValueError:
        raise UserError(f"--batch must be 'dynamic' or a positive integer, got '{text}'") from None
    if n < 1:
        raise UserError(f"--batch must be 'dynamic' or a positive integer, got '{text}'")
    return n


def export_onnx(checkpoint, output: Path | None = None, scan: str = "loop", opset: int = DEFAULT_OPSET,
                batch="dynamic", split: bool = False, chunk: int = scan_graph.DEFAULT_CHUNK) -> ExportResult:
    """Export a checkpoint (run folder or ``Checkpoint``) to ONNX; see the module docstring.

    Returns the written paths (one, or encoder + head with ``split``), the number of scan sites and
    node counts. Every user mistake raises ``UserError`` before anything is written.
    """
    _validate(scan, opset, batch, chunk)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    output = output_path(output if output is not None else default_output(ckpt, scan), "ONNX output",
                         example_name="model.onnx")
    model = ckpt.build_model()
    cfg = ckpt.model_config
    n = batch if batch != "dynamic" else 2              # trace with 2: no size-1 broadcasting shortcuts
    clip = torch.zeros(n, cfg.clip_len, cfg.in_channels, cfg.height, cfg.width)
    common = dict(ckpt=ckpt, scan=scan, opset=opset, batch=batch, chunk=chunk)
    with torch.no_grad(), scan_nodes(model):
        if not split:
            dyn = {k: {0: "batch"} for k in (INPUT_NAME, *OUTPUT_NAMES)} if batch == "dynamic" else {}
            onnx_model = _trace(model, (clip,), [INPUT_NAME], OUTPUT_NAMES, dyn, opset)
            meta = _metadata(graph="whole", inputs=[INPUT_NAME], outputs=OUTPUT_NAMES, **common)
            onnx_model, sites = _finish(onnx_model, scan, chunk, meta, "whole")
            _save(onnx_model, output)
            return ExportResult([output], scan, sites, {output.name: scan_graph.count_nodes(onnx_model)})
        return _export_split(model, clip, output, **common)


def _export_split(model: M2S2L, clip, output: Path, ckpt, scan, opset, batch, chunk) -> ExportResult:
    enc_path, head_path = split_paths(output)
    link = {"split_id": uuid.uuid4().hex, "split_encoder": enc_path.name, "split_head": head_path.name}
    common = dict(ckpt=ckpt, scan=scan, opset=opset, batch=batch, chunk=chunk)
    b, t = clip.shape[:2]
    frames = clip.flatten(0, 1)
    dynamic = batch == "dynamic"

    enc = _trace(FrameEncoder(model), (frames,), SPLIT_INPUTS, SPLIT_FEATURES,
                 {k: {0: "frames"} for k in (*SPLIT_INPUTS, *SPLIT_FEATURES)} if dynamic else {}, opset)
    enc, sites_enc = _finish(enc, scan, chunk, _metadata(graph="encoder", inputs=SPLIT_INPUTS,
                                                         outputs=SPLIT_FEATURES, extra=link, **common), "encoder")
    feat2, feat3 = (f.view(b, t, *f.shape[1:]) for f in FrameEncoder(model)(frames))
    head_inputs = (INPUT_NAME, *SPLIT_FEATURES)
    head = _trace(ClipHead(model), (clip, feat2, feat3), head_inputs, OUTPUT_NAMES,
                  {k: {0: "batch"} for k in (*head_inputs, *OUTPUT_NAMES)} if dynamic else {}, opset)
    head, sites_head = _finish(head, scan, chunk, _metadata(graph="head", inputs=head_inputs, outputs=OUTPUT_NAMES,
                                                            extra=link, **common), "head")
    _save(enc, enc_path)
    _save(head, head_path)
    return ExportResult([enc_path, head_path], scan, sites_enc + sites_head,
                        {enc_path.name: scan_graph.count_nodes(enc), head_path.name: scan_graph.count_nodes(head)})


def read_metadata(path: Path) -> dict[str, str]:
    """metadata_props of an ONNX file, without loading its weights."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
