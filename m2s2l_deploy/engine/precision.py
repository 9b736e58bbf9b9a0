"""Reduced-precision ONNX for strongly typed engines: FP16 mixed precision and explicit Q/DQ INT8.

TensorRT 11 removed weak typing and TensorRT-RTX never had it, so precision lives in the ONNX:

- ``to_fp16``: onnxconverter-common's ``convert_float_to_float16`` (``keep_io_types=True``: the
  graph still takes and returns float32). Kept in FP32: every selective scan (the exponent of the
  decay, the softplus of delta, the recurrence state and its read-out), all ``Exp``/``Softplus``/
  ``Log``/``Pow``/``Sqrt``/``Reciprocal`` nodes, normalisation layers, and the score head (every
  node that feeds ``frame_score``/``score_map`` but not the predicted frames: errors, SSIM,
  PSNR, standardisation). The converter mishandles ``Loop`` bodies that read outer-scope values
  (it renames the outer tensors), so each scan site is first collapsed into one opaque node,
  converted around, and put back unchanged.
- ``to_int8``: ``onnxruntime.quantization.quantize_static`` in QDQ format with per-channel
  symmetric INT8 weights, symmetric INT8 activations and ``QuantizeBias=False`` (TensorRT rejects
  int32 bias DequantizeLinear). Only Conv, ConvTranspose, MatMul and Gemm are quantized; every
  scan node is excluded, so no Q/DQ sits inside a scan (it runs at FP32), and so are the frame
  embedding (``input_layer_names``), the layers that produce the reconstructions
  (``output_layer_names``), whose error the score reads directly, and the temporal encoders around
  the time scans (``temporal_layer_names``).

Both return a model that keeps the export's metadata (input contract, checkpoint hash, ...) plus
``precision`` and how it was made, so ``OnnxRunner`` runs it like any export.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..export.scan_graph import DOMAIN, OP_TYPE

SCAN_SITE = re.compile(r"^(.*?SelectiveScan\d*/)")
SCORE_OUTPUTS = ("frame_score", "score_map")
FP32_OPS = ("Exp", "Softplus", "Log", "Pow", "Sqrt", "Reciprocal", "LayerNormalization", "GroupNormalization",
            "InstanceNormalization", "BatchNormalization", "RMSNormalization")
INT8_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
CALIB_METHODS = ("minmax", "entropy", "percentile")
_SITE_DOMAIN = "m2s2l.internal"


# -- graph helpers --------------------------------------------------------------------------------
def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give every top-level node a unique name (block lists and exclusions work by name)."""
    seen = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op_type}__{i}"
        seen.add(node.name)


def _subgraph_inputs(node: onnx.NodeProto) -> list[str]:
    """Names read inside a node's subgraphs (any depth): outer-scope references among them."""
    names = []
    for attr in node.attribute:
        for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for n in g.node:
                names.extend(n.input)
                names.extend(_subgraph_inputs(n))
    return names


def _reads(node: onnx.NodeProto) -> list[str]:
    return [x for x in list(node.input) + _subgraph_inputs(node) if x]


def is_scan_node(node: onnx.NodeProto) -> bool:
    """A SelectiveScan plugin node or any node of an expanded scan (loop/chunked form)."""
    return (node.op_type == OP_TYPE and node.domain == DOMAIN) or bool(SCAN_SITE.match(node.name))


def scan_node_names(graph: onnx.GraphProto) -> list[str]:
    return [n.name for n in graph.node if is_scan_node(n)]


def score_head_names(graph: onnx.GraphProto) -> set[str]:
    """Nodes that feed the score outputs but none of the other outputs (the predicted frames)."""
    producer = {o: n for n in graph.node for o in n.output}

    def ancestors(outputs) -> set[str]:
        found, stack = set(), list(outputs)
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in found:
                continue
            found.add(node.name)
            stack.extend(_reads(node))
        return found

    outs = [o.name for o in graph.output]
    score = [o for o in outs if o in SCORE_OUTPUTS]
    return ancestors(score) - ancestors([o for o in outs if o not in SCORE_OUTPUTS]) if score else set()


def output_layer_names(graph: onnx.GraphProto, op_types=None) -> list[str]:
    """The last Conv/MatMul-like node before each non-score output (the reconstruction heads).

    Kept out of INT8, as the first/last layers usually are: their error lands directly on the
    predicted frames that the score compares with the input (measured on the trained tiny model:
    |dAUC| 0.006 -> 0.0025 on the synthetic test scene).
    """
    op_types = set(op_types or INT8_OPS)
    producer = {o: n for n in graph.node for o in n.output}
    found, seen = [], set()
    stack = [o.name for o in graph.output if o.name not in SCORE_OUTPUTS]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in op_types:
            found.append(node.name)
            continue
        stack.extend(x for x in node.input if x)
    return sorted(found)


def input_layer_names(graph: onnx.GraphProto, op_types=None) -> list[str]:
    """The first Conv/MatMul-like node on every path from the graph input (the frame embedding).

    Kept out of INT8 like the output heads: the raw frame's quantization error propagates into
    every feature (measured on the trained tiny model with `validate`: the frame-score error,
    p99 relative, 0.32 with it quantized, above the int8 gate of 0.25; 0.07 without).
    """
    op_types = set(op_types or INT8_OPS)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    found, seen = set(), set()
    stack = [i.name for i in graph.input]
    while stack:
        for node in consumers.get(stack.pop(), []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in op_types:
                found.add(node.name)
            else:
                stack.extend(o for o in node.output if o)
    return sorted(found)


TEMPORAL = re.compile(r"(^|/)temporal\d*/")


def temporal_layer_names(graph: onnx.GraphProto, op_types=None) -> list[str]:
    """Conv/MatMul-like nodes of the temporal encoders (the Mamba blocks along time).

    Kept out of INT8: their projections feed the time scans, whose decays compound an input error
    over the clip, and the score standardises small errors of the whole frame. Measured with the test
    suite's trained tiny model on its synthetic test scene (frame-score error, p99 relative, against
    fp32 ONNX Runtime): 0.335 with them quantized, above the int8 gate of 0.25; 0.152 without; keeping
    the spatial stages or the decoders in fp32 instead changed nothing (0.315-0.341).
    """
    op_types = set(op_types or INT8_OPS)
    return sorted(n.name for n in graph.node if n.op_type in op_types and TEMPORAL.search(n.name))


# -- opaque scan sites (FP16 conversion) ----------------------------------------------------------
def _collapse_sites(model: onnx.ModelProto) -> dict:
    """Replace each scan site and any other node with a subgraph by one opaque node, in place.

    Returns what ``_restore_sites`` needs: per placeholder name, the original nodes, their
    external inputs/outputs, and the value_info of their internal tensors (removed from the graph
    so the converter cannot retype them).
    """
    graph = model.graph
    groups: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        m = SCAN_SITE.match(node.name)
        key = m.group(1) if m else (node.name if _subgraph_inputs(node) else None)
        if key is not None:
            groups.setdefault(key, []).append(i)
    outside_reads: dict[str, set] = {}
    for i, node in enumerate(graph.node):
        for x in _reads(node):
            outside_reads.setdefault(x, set()).add(i)
    graph_outputs = {o.name for o in graph.output}
    outer = ({i.name for i in graph.input} | {t.name for t in graph.initializer}
             | {o for n in graph.node for o in n.output})
    sites, replace_at, drop = {}, {}, set()
    for k, (key, idx) in enumerate(groups.items()):
        if idx != list(range(idx[0], idx[-1] + 1)):
            raise RuntimeError(f"scan site {key} is not contiguous in the graph")
        nodes = [graph.node[i] for i in idx]
        produced = [o for n in nodes for o in n.output if o]
        produced_set = set(produced)
        ext_in = list(dict.fromkeys(x for n in nodes for x in _reads(n) if x in outer and x not in produced_set))
        ext_out = [o for o in produced if o in graph_outputs or (outside_reads.get(o, set()) - set(idx))]
        name = f"__scan_site_{k}"
        placeholder = helper.make_node("Site", ext_in, ext_out, name=name, domain=_SITE_DOMAIN)
        internal = produced_set - set(ext_out)
        sites[name] = {"nodes": [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes],
                       "ext_in": ext_in, "ext_out": ext_out,
                       "value_info": [v for v in graph.value_info if v.name in internal]}
        replace_at[idx[0]] = placeholder
        drop.update(idx)
    new_nodes = []
    for i, node in enumerate(graph.node):
        if i in replace_at:
            new_nodes.append(replace_at[i])
        elif i not in drop:
            new_nodes.append(node)
    internal_all = {v.name for s in sites.values() for v in s["value_info"]}
    kept_vi = [v for v in graph.value_info if v.name not in internal_all]
    graph.ClearField("node")
    graph.node.extend(new_nodes)
    graph.ClearField("value_info")
    graph.value_info.extend(kept_vi)
    if sites:
        model.opset_import.append(helper.make_opsetid(_SITE_DOMAIN, 1))
    return sites


def _rename_reads(node: onnx.NodeProto, mapping: dict) -> None:
    for i, x in enumerate(node.input):
        if x in mapping:
            node.input[i] = mapping[x]
    for attr in node.attribute:
        for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for n in g.node:
                _rename_reads(n, mapping)


def _restore_sites(model: onnx.ModelProto, sites: dict) -> None:
    """Put the original nodes back where the converter left each placeholder (names remapped)."""
    graph = model.graph
    new_nodes = []
    for node in graph.node:
        site = sites.get(node.name) if node.domain == _SITE_DOMAIN else None
        if site is None:
            new_nodes.append(node)
            continue
        mapping = dict(zip(site["ext_in"], node.input))
        out_map = dict(zip(site["ext_out"], node.output))
        for original in site["nodes"]:
            _rename_reads(original, mapping)
            for i, o in enumerate(original.output):
                if o in out_map:
                    original.output[i] = out_map[o]
            new_nodes.append(original)
        graph.value_info.extend(site["value_info"])
    graph.ClearField("node")
    graph.node.extend(new_nodes)
    # the placeholder domain is gone again
    keep = [o for o in model.opset_import if o.domain != _SITE_DOMAIN]
    model.ClearField("opset_import")
    model.opset_import.extend(keep)


def _inline_identity_initializers(graph: onnx.GraphProto) -> None:
    """Identity(initializer) -> a copy of the initializer under the output name.

    The TorchScript exporter shares tied weights through Identity nodes; the FP16 converter then
    converts the initializer but not the Identity's declared type, which ORT rejects.
    """
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            graph.initializer.append(t)
        else:
            keep.append(node)
    graph.ClearField("node")
    graph.node.extend(keep)


def _split_shared_initializers(graph: onnx.GraphProto, stays_fp32) -> None:
    """Give FP32 nodes their own copy of any initializer that converted nodes read too.

    The converter types each initializer once, so a weight read by both sides (the empty scene:
    added by the appearance head, compared with the target by the score head) would reach one of
    them with the wrong type."""
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list] = {}
    for n in graph.node:
        for x in n.input:
            if x in inits:
                readers.setdefault(x, []).append(n)
    for name, nodes in readers.items():
        fp32 = [n for n in nodes if stays_fp32(n)]
        if not fp32 or len(fp32) == len(nodes):
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[name])
        copy.name = name + "__fp32"
        graph.initializer.append(copy)
        for n in fp32:
            n.input[:] = [copy.name if x == name else x for x in n.input]


def _float_outputs(model: onnx.ModelProto, names: set[str]) -> None:
    """Outputs that were float32 stay float32 (the converter casts some back to FP16 when their
    producer was kept in FP32): a final Cast to FP16 becomes a Cast to FP32, else one is appended."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    for out in graph.output:
        tt = out.type.tensor_type
        if out.name not in names or tt.elem_type == onnx.TensorProto.FLOAT:
            continue
        node = producer[out.name]
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to":
                    a.i = onnx.TensorProto.FLOAT
        else:
            inner = out.name + "__fp16"
            node.output[list(node.output).index(out.name)] = inner
            graph.node.append(helper.make_node("Cast", [inner], [out.name], name=out.name + "__to_fp32",
                                               to=onnx.TensorProto.FLOAT))
        tt.elem_type = onnx.TensorProto.FLOAT
    stale = [v for v in graph.value_info if v.name in names]
    for v in stale:
        graph.value_info.remove(v)


def _set_metadata(model: onnx.ModelProto, extra: dict) -> None:
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update({k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in extra.items()})
    helper.set_model_props(model, meta)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(model.SerializeToString())


# -- FP16 -----------------------------------------------------------------------------------------
def to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """FP16 mixed-precision copy of ``model`` (float32 inputs/outputs); see the module docstring."""
    import onnxconverter_common
    from onnxconverter_common import float16

    model = onnx.shape_inference.infer_shapes(_copy(model))
    graph = model.graph
    _inline_identity_initializers(graph)
    _name_nodes(graph)
    scan = set(scan_node_names(graph))
    head = score_head_names(graph)
    sites = _collapse_sites(model)
    blocked = set(head) | {n.name for n in graph.node if n.op_type == OP_TYPE and n.domain == DOMAIN}
    blocked |= {n.name for n in graph.node if n.domain == _SITE_DOMAIN}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for x in _reads(n):
            consumers.setdefault(x, []).append(n)
    op_block = set(FP32_OPS) | set(float16.DEFAULT_OP_BLOCK_LIST)
    # Constants read only by FP32 nodes stay FP32 (no rounding of epsilons and weights of the head).
    for n in graph.node:
        if n.op_type == "Constant":
            users = [u for o in n.output for u in consumers.get(o, [])]
            if users and all(u.name in blocked or u.op_type in op_block for u in users):
                blocked.add(n.name)
    _split_shared_initializers(graph, lambda n: n.name in blocked or n.op_type in op_block)
    with warnings.catch_warnings(record=True) as clamped:      # "the float32 number x will be truncated to 1e-07"
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=sorted(op_block),
                                                     node_block_list=sorted(blocked))
    _restore_sites(converted, sites)
    _float_outputs(converted, {o.name for o in model.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT})
    onnx.checker.check_model(converted)
    half = sum(1 for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    info = {"tool": f"onnxconverter-common {onnxconverter_common.__version__} convert_float_to_float16",
            "keep_io_types": True, "fp32_ops": sorted(FP32_OPS), "fp32_scan_nodes": len(scan),
            "fp32_score_head_nodes": len(head), "fp16_initializers": half,
            "clamped_values_warnings": sum("truncated" in str(w.message) for w in clamped),
            "fp32_initializers": sum(1 for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)}
    _set_metadata(converted, {"precision": "fp16", "precision_info": info})
    return converted, info


# -- INT8 (Q/DQ) ----------------------------------------------------------------------------------
class ClipReader:
    """onnxruntime.quantization CalibrationDataReader over prepared clips, ``batch`` at a time."""

    def __init__(self, clips: np.ndarray, input_name: str = "clip", batch: int = 8):
        self.clips, self.input_name, self.batch = clips, input_name, batch
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.clips):
            return None
        chunk = self.clips[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return {self.input_name: np.ascontiguousarray(chunk, dtype=np.float32)}

    def rewind(self):
        self.pos = 0


# Calibrator settings. ORT's entropy default (128 histogram bins for 128 quantized bins) leaves a
# single candidate threshold, i.e. it equals min-max; 512 bins give 385 candidates. (TensorRT's
# classic 2048 bins cost ~3 s per tensor in ORT's Python search, measured here: ~75 s for tiny.)
CALIB_OPTIONS = {"minmax": {"max_intermediate_outputs": 64},
                 "entropy": {"num_bins": 512, "num_quantized_bins": 128},
                 "percentile": {"num_bins": 2048, "percentile": 99.999, "symmetric": True}}


def _calibrate(src: Path, clips: np.ndarray, method: str, input_name: str, tmp: Path, cache: Path) -> None:
    """Tensor ranges of every input/output of the ops to quantize -> ``cache`` (ORT's JSON format)."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data

    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    calibrator = create_calibrator(src, list(INT8_OPS), augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=calib, providers=["CPUExecutionProvider"],
                                   extra_options=dict(CALIB_OPTIONS[method]))
    calibrator.collect_data(ClipReader(clips, input_name))
    ranges = calibrator.compute_data()
    part = tmp / "ranges.json"
    save_tensors_data(ranges, part)
    cache.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, cache) if part.stat().st_dev == cache.parent.stat().st_dev else shutil.copyfile(part, cache)


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization advises optional pre-processing through the root logger on every
    call; keep that generic advice out of the CLI's output (errors still show)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def to_int8(model: onnx.ModelProto, clips: np.ndarray, method: str = "minmax", input_name: str = "clip",
            ranges_cache: Path | None = None) -> tuple[onnx.ModelProto, dict]:
    """Explicit Q/DQ INT8 copy of ``model`` calibrated on ``clips`` (N, T, C, H, W) float32.

    ``ranges_cache``: a JSON file of calibrated tensor ranges (ONNX Runtime's calibration cache);
    reused when it exists, written otherwise. Key it by model, clips and method.
    """
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIB_METHODS:
        raise ValueError(f"unknown calibration method {method!r}")
    model = _copy(model)
    _name_nodes(model.graph)
    heads = output_layer_names(model.graph)
    inputs = input_layer_names(model.graph)
    temporal = [n for n in temporal_layer_names(model.graph) if n not in heads and n not in inputs]
    excluded = scan_node_names(model.graph) + heads + inputs + temporal
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    extra = {"QuantizeBias": False, "WeightSymmetric": True, "ActivationSymmetric": True}
    with tempfile.TemporaryDirectory(prefix="m2s2l-int8-") as tmp, _quiet_root_logger():
        tmp = Path(tmp)
        src, dst = tmp / "fp32.onnx", tmp / "qdq.onnx"
        onnx.save(model, str(src))
        common = dict(quant_format=QuantFormat.QDQ, op_types_to_quantize=list(INT8_OPS), per_channel=True,
                      activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                      calibrate_method=calib, extra_options=extra)
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            cache = Path(ranges_cache) if ranges_cache is not None else tmp / "cache" / "ranges.json"
            reused = cache.is_file()
            if not reused:
                _calibrate(src, clips, method, input_name, tmp, cache)
            quantize_static(str(src), str(dst), None, calibration_cache_path=str(cache), **common)
        else:                # older onnxruntime: its own calibrator, default histogram sizes, no cache
            reused, ranges_cache = False, None
            quantize_static(str(src), str(dst), ClipReader(clips, input_name), **common)
        quantized = onnx.load(str(dst))
    quantized.ClearField("metadata_props")
    quantized.metadata_props.extend(model.metadata_props)
    n_q = sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear")
    n_dq = sum(1 for n in quantized.graph.node if n.op_type == "DequantizeLinear")
    inside = [n.name for n in quantized.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
              and SCAN_SITE.match(n.name)]
    if inside:
        raise RuntimeError(f"Q/DQ nodes ended up inside a scan: {inside[:3]}")
    info = {"tool": f"onnxruntime {onnxruntime.__version__} quantization.quantize_static", "format": "QDQ",
            "weights": "int8 per-channel symmetric", "activations": "int8 per-tensor symmetric",
            "quantize_bias": False, "op_types": list(INT8_OPS),
            "excluded_scan_nodes": len(excluded) - len(heads) - len(inputs) - len(temporal),
            "fp32_input_layers": inputs, "fp32_output_layers": heads, "fp32_temporal_layers": temporal,
            "method": method, "calibrator": {k: v for k, v in CALIB_OPTIONS[method].items()
                                             if k != "max_intermediate_outputs"},
            "clips": int(len(clips)), "ranges_cache": str(ranges_cache) if ranges_cache is not None else None,
            "ranges_reused": reused, "quantize_nodes": n_q, "dequantize_nodes": n_dq}
    _set_metadata(quantized, {"precision": "int8", "precision_info": info})
    return quantized, info
