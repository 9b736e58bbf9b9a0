"""``build_engine``: an exported ONNX -> a strongly typed TensorRT plan + its JSON sidecar.

Steps, each a small function:
1. ``load_export``: the file must be an ONNX exported by m2s2l-deploy (its metadata carries the
   input contract and the checkpoint hash the sidecar records); anything else is a UserError.
2. precision: fp32 as is; fp16 / int8 through ``precision.to_fp16`` / ``precision.to_int8``
   (INT8 calibration clips from ``calibration.calibration_set``); the reduced-precision ONNX is
   written next to the plan (``NAME.onnx``) and runs in ONNX Runtime on its own.
3. ``tensorrt_ready``: small ONNX fixes the TensorRT parsers need (an explicit ``true`` for
   ``Loop``s that leave the optional loop condition empty; TensorRT-RTX 1.7 refuses the empty name
   with "Node input was not registered").
4. parse and build with a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
   where the flag exists; TensorRT 11 and TensorRT-RTX are strongly typed anyway), one optimisation
   profile over the batch axis (min/opt/max), an optional timing cache, single-threaded by
   default. The SelectiveScan plugin creator is registered before parsing.
5. plan and sidecar written atomically (plan first; the sidecar's existence means the pair is
   complete); nothing is written when any step fails. Beside them, a Polygraphy data loader and
   the commands that check the plan against ONNX Runtime (``polygraphy_check.py``).

Without a GPU only TensorRT-RTX can build (ahead of time, for its default set of compute
capabilities); full TensorRT builds for the GPU it runs on.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..contract import InputContract
from ..errors import UserError
from ..export.scan_graph import DOMAIN
from ..files import atomic_write_bytes, atomic_write_json, file_sha256, output_path
from . import sidecar as sc
from .backend import Backend, load_backend
from .calibration import DEFAULT_CLIPS, DEFAULT_DIR
from .polygraphy_check import check_paths, write_check
from .plugin import PLUGIN_NAME, fields_to_dict, plugin_descriptor, register_plugin
from .precision import CALIB_METHODS

if TYPE_CHECKING:
    import onnx

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCH = (1, 4, 16)


class EngineBuildError(UserError):
    """TensorRT refused to parse or build; ``messages`` holds its full log (errors and warnings)."""

    def __init__(self, message: str, messages: list[str] | None = None):
        super().__init__(message)
        self.messages = messages or []


@dataclass
class BuildResult:
    """What ``build_engine`` made. ``network`` describes the network TensorRT built from."""

    plan: Path
    sidecar: Path
    build_seconds: float
    precision: str
    backend: str
    precision_onnx: Path | None
    network: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)       # the sidecar's content

    @property
    def plugin_layers(self) -> list[dict]:
        return self.network.get("plugin_layers", [])


# -- 1. the export ------------------------------------------------------------------------------
def load_export(path) -> tuple[onnx.ModelProto, dict]:
    """(model, metadata) of an m2s2l-deploy export; one-line UserError for anything else."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise UserError(f"ONNX file {path} does not exist")
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf raises DecodeError and friends, with no common public base
        raise UserError(f"{path} is not an ONNX model ({type(e).__name__})") from None
    if not model.ir_version or not model.graph.node:
        raise UserError(f"{path} is not an ONNX model (no graph)")
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("format", "").split("/")[:2] != ["m2s2l-deploy", "onnx"] or "contract" not in meta:
        raise UserError(f"{path} is an ONNX model but not an M2S2L export of m2s2l-deploy (no input contract in its "
                        "metadata); export one with `m2s2l-deploy export --checkpoint RUN`")
    return model, meta


def _batch_profile(model, min_b: int, opt_b: int, max_b: int) -> dict[str, dict]:
    """{input: {min, opt, max}} with the batch axis (dim 0) free and every other dim fixed."""
    if not 1 <= min_b <= opt_b <= max_b:
        raise UserError(f"batch profile must satisfy 1 <= min <= opt <= max, got {min_b}/{opt_b}/{max_b}")
    inits = {t.name for t in model.graph.initializer}
    profile = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        fixed = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
        if any(v is None for v in fixed[1:]):
            raise UserError(f"input '{inp.name}' has a dynamic axis other than the batch: only the batch may vary")
        if fixed and fixed[0] is not None:                       # exported with a fixed batch
            lo = hi = opt = fixed[0]
        else:
            lo, opt, hi = min_b, opt_b, max_b
        profile[inp.name] = {"min": [lo, *fixed[1:]], "opt": [opt, *fixed[1:]], "max": [hi, *fixed[1:]]}
    return profile


# -- 3. parser fixes ----------------------------------------------------------------------------
def tensorrt_ready(model) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with the fixes the TensorRT ONNX parsers need; returns (model, fixes)."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    fixed = 0

    def fix_nodes(nodes) -> list:
        nonlocal fixed
        out = []
        for node in nodes:
            for attr in node.attribute:
                for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    new = fix_nodes(g.node)
                    g.ClearField("node")
                    g.node.extend(new)
            if node.op_type == "Loop" and len(node.input) > 1 and node.input[1] == "":
                name = f"{node.name or 'Loop'}__cond_true_{fixed}"
                out.append(helper.make_node("Constant", [], [name], name=name,
                                            value=helper.make_tensor(name, onnx.TensorProto.BOOL, [], [True])))
                node.input[1] = name
                fixed += 1
            out.append(node)
        return out

    new = fix_nodes(model.graph.node)
    model.graph.ClearField("node")
    model.graph.node.extend(new)
    for fn in model.functions:
        new = fix_nodes(fn.node)
        fn.ClearField("node")
        fn.node.extend(new)
    return model, ([f"explicit true condition on {fixed} Loop nodes"] if fixed else [])


# -- 4. TensorRT --------------------------------------------------------------------------------
def _logger(trt):
    class Collect(trt.ILogger):
        """Keeps warnings and errors for the error message and the sidecar (TensorRT is chatty)."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR,
                            trt.ILogger.Severity.WARNING):
                self.messages.append((str(severity).split(".")[-1], str(msg)))

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s in ("ERROR", "INTERNAL_ERROR")]

    return Collect()


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else str(text)


def _network_summary(trt, network, plugin_creator) -> dict:
    """Layer counts by type, the plugin layers (name + fields), layers computing in HALF / INT8."""
    types, plugins, half, int8 = Counter(), [], 0, 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        types[str(layer.type).split(".")[-1]] += 1
        if layer.type == trt.LayerType.PLUGIN_V3:
            entry = {"name": layer.name}
            made = [c for c in (plugin_creator.created if plugin_creator is not None else []) if c[0] == layer.name]
            if made:
                entry["fields"] = made[-1][1]
                entry["serialized_fields"] = fields_to_dict(made[-1][3].get_fields_to_serialize())
            plugins.append(entry)
        outs = [layer.get_output_type(k) for k in range(layer.num_outputs)]
        half += any(t == trt.DataType.HALF for t in outs)
        int8 += any(t == trt.DataType.INT8 for t in outs)
    return {"layers": network.num_layers, "layer_types": dict(sorted(types.items())), "plugin_layers": plugins,
            "half_layers": half, "int8_layers": int8}


def _targets(backend: Backend, config, trt, compute_capabilities) -> tuple[list[str], str, str]:
    """(target compute capabilities, where they come from, build device) for the sidecar."""
    device = "AOT/CPU (no GPU at build time)"
    try:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            device = f"{torch.cuda.get_device_name()} (compute capability {major}.{minor})"
            current = f"{major}.{minor}"
        else:
            current = None
    except Exception:
        current = None
    if backend.is_rtx:
        if compute_capabilities:
            config.num_compute_capabilities = len(compute_capabilities)
            for i, cc in enumerate(compute_capabilities):
                config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + cc.replace(".", "")), i)
            return list(compute_capabilities), "--compute-capability", device
        return list(sc.RTX_DEFAULT_TARGETS), "TensorRT-RTX default portable set", device
    if current is None:
        raise UserError("full TensorRT builds engines on a GPU and none is visible; use --backend tensorrt-rtx to "
                        "build ahead of time on this machine")
    return [current], "build GPU", device


def check_compute_capabilities(backend: Backend, ccs) -> list[str] | None:
    """``--compute-capability`` values TensorRT-RTX knows ("8.6" -> ComputeCapability.SM86)."""
    if not ccs:
        return None
    if not backend.is_rtx:
        raise UserError("--compute-capability is for TensorRT-RTX; full TensorRT builds for the GPU it runs on")
    known = [m[2:-1] + "." + m[-1] for m in backend.trt.ComputeCapability.__members__ if m.startswith("SM")]
    for cc in ccs:
        if cc not in known:
            raise UserError(f"TensorRT-RTX {backend.version} cannot target compute capability {cc} "
                            f"(it knows {', '.join(known)})")
    return list(ccs)


def _build(backend: Backend, model_bytes: bytes, profile: dict, timing_cache: Path | None, threads: int,
           compute_capabilities, needs_plugin: bool, n_scan_nodes: int, log) -> tuple[bytes, dict, dict, bytes | None]:
    trt = backend.trt
    logger = _logger(trt)
    creator = register_plugin(trt) if needs_plugin else None
    builder = trt.Builder(logger)
    if hasattr(builder, "max_threads") and threads:
        builder.max_threads = int(threads)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    log(f"{backend.label}: parsing ({len(model_bytes) / 1e6:.1f} MB ONNX)")
    if not parser.parse(model_bytes):
        errs = [parser.get_error(i) for i in range(parser.num_errors)]
        first = errs[0] if errs else None
        where = f" at node '{first.node_name()}'" if first is not None and first.node_name() else ""
        detail = _first_line(first.desc()) if first is not None else (logger.errors() or ["unknown error"])[0]
        raise EngineBuildError(f"{backend.label} cannot parse the ONNX{where}: {detail}",
                               [m for _, m in logger.messages])
    summary = _network_summary(trt, network, creator)
    if needs_plugin and len(summary["plugin_layers"]) != n_scan_nodes:
        raise EngineBuildError(f"{backend.label} mapped {len(summary['plugin_layers'])} of {n_scan_nodes} SelectiveScan "
                               "nodes to the plugin (the rest fell back to the function body)")
    config = builder.create_builder_config()
    opt = builder.create_optimization_profile()
    for name, shapes in profile.items():
        opt.set_shape(name, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
    config.add_optimization_profile(opt)
    targets, source, device = _targets(backend, config, trt, compute_capabilities)
    cache = None
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    log(f"{backend.label}: building ({summary['layers']} layers, {len(summary['plugin_layers'])} plugin layers)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errors = logger.errors() or ["no reason given"]
        raise EngineBuildError(f"{backend.label} refused to build the engine: {_first_line(errors[-1])}",
                               [m for _, m in logger.messages])
    cache_bytes = bytes(memoryview(config.get_timing_cache().serialize())) if cache is not None else None
    info = {"targets": targets, "targets_source": source, "device": device,
            "strongly_typed": True, "warnings": sorted({m for s, m in logger.messages if s == "WARNING"})[:20]}
    return bytes(memoryview(serialized)), summary, info, cache_bytes


# -- the public entry ---------------------------------------------------------------------------
def default_plan_path(onnx_path: Path, precision: str) -> Path:
    stem = Path(onnx_path).name
    stem = stem[:-5] if stem.endswith(".onnx") else stem
    return Path("engines") / f"{stem}-{precision}.plan"


def _model_record(meta: dict) -> dict:
    keep = ("preset", "checkpoint_sha256", "scan_form", "graph", "input_size", "clip_len", "channels",
            "normalisation", "opset", "threshold", "toolkit_version")
    record = {k: meta[k] for k in keep if k in meta}
    for k in ("contract", "input_names", "output_names"):
        if k in meta:
            record[k] = json.loads(meta[k])
    return record


def build_engine(onnx_path, output=None, precision: str = "fp32", calib_data=None, backend=None, *,
                 calib_clips: int = DEFAULT_CLIPS, calib_method: str = "minmax", calib_dir=DEFAULT_DIR,
                 min_batch: int = DEFAULT_BATCH[0], opt_batch: int = DEFAULT_BATCH[1],
                 max_batch: int = DEFAULT_BATCH[2], timing_cache=None, compute_capabilities=None,
                 threads: int = 1, log=None) -> BuildResult:
    """Build a TensorRT plan from an m2s2l-deploy ONNX export; see the module docstring.

    precision: fp32 | fp16 | int8. calib_data: training footage root for int8 (else the newest
    matching set cached in ``calib_dir``). backend: None (auto: tensorrt, then tensorrt-rtx),
    "tensorrt" or "tensorrt-rtx". Returns paths, build seconds and what was built.
    """
    from .precision import to_fp16, to_int8

    log = log or (lambda *_: None)
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}' (choose {', '.join(PRECISIONS)})")
    if calib_method not in CALIB_METHODS:
        raise UserError(f"unknown --calib-method '{calib_method}' (choose {', '.join(CALIB_METHODS)})")
    if calib_data is not None and precision != "int8":
        raise UserError("--calib-data is for --int8 only")
    if calib_clips < 1:
        raise UserError(f"--calib-clips must be >= 1, got {calib_clips}")
    onnx_path = Path(onnx_path)
    model, meta = load_export(onnx_path)
    made_as = meta.get("precision", "fp32")
    if made_as != "fp32":
        if precision not in ("fp32", made_as):
            raise UserError(f"{onnx_path} is already a {made_as} ONNX; build {precision} from the fp32 export")
        precision = made_as                                # build the given reduced-precision ONNX as is
    profile = _batch_profile(model, min_batch, opt_batch, max_batch)
    be = load_backend(backend)
    compute_capabilities = check_compute_capabilities(be, compute_capabilities)
    plan = output_path(Path(output) if output is not None else default_plan_path(onnx_path, precision), "engine plan",
                       example_name="model.plan")
    side_path = sc.sidecar_path(plan)
    timing_cache = Path(timing_cache) if timing_cache is not None else None
    if timing_cache is not None:
        output_path(timing_cache, "timing cache", example_name="timing.cache")
    contract = InputContract.from_dict(json.loads(meta["contract"]))

    record: dict = {}
    t0 = time.perf_counter()
    precision_onnx = None
    if precision == "fp16" and made_as == "fp32":
        log("converting to FP16 mixed precision (onnxconverter-common)")
        model, record["precision_info"] = to_fp16(model)
    elif precision == "int8" and made_as == "fp32":
        from .calibration import calibration_set
        clips, record["calibration"] = calibration_set(contract, calib_data, calib_clips, Path(calib_dir), log=log)
        log(f"calibrating INT8 ({calib_method}, {len(clips)} clips) and inserting Q/DQ (onnxruntime.quantization)")
        input_name = next(iter(profile))
        ranges = Path(calib_dir) / (f"ranges-{file_sha256(onnx_path)[:16]}-{record['calibration'].get('key', 'set')}"
                                    f"-{calib_method}.json")
        model, record["precision_info"] = to_int8(model, clips, calib_method, input_name=input_name,
                                                  ranges_cache=ranges)
    if precision != "fp32" and made_as == "fp32":
        precision_onnx = plan.with_suffix(".onnx")
        if precision_onnx.resolve() == onnx_path.resolve():           # never overwrite the source export
            precision_onnx = plan.with_name(f"{plan.stem}.{precision}.onnx")
        data = model.SerializeToString()
        atomic_write_bytes(precision_onnx, lambda tmp: Path(tmp).write_bytes(data))
        log(f"wrote {precision_onnx} ({precision} ONNX, runs in ONNX Runtime)")
    convert_seconds = time.perf_counter() - t0

    ready, fixes = tensorrt_ready(model)
    scan_nodes = [n for n in ready.graph.node if n.op_type == PLUGIN_NAME and n.domain == DOMAIN]
    t1 = time.perf_counter()
    try:
        plan_bytes, network, info, cache_bytes = _build(
            be, ready.SerializeToString(), profile, timing_cache, threads, compute_capabilities,
            needs_plugin=bool(scan_nodes), n_scan_nodes=len(scan_nodes), log=log)
    except EngineBuildError as e:
        if precision_onnx is not None:
            raise EngineBuildError(f"{e} ({precision_onnx} was written and runs in ONNX Runtime)", e.messages) from None
        raise
    build_seconds = time.perf_counter() - t1

    side = {
        "format": sc.FORMAT,
        "plan": {"file": plan.name, "sha256": sc.bytes_sha256(plan_bytes), "bytes": len(plan_bytes)},
        "backend": {"name": be.name, "version": be.version, "module": be.trt.__name__},
        "precision": precision,
        "strongly_typed": True,
        "device": info["device"],
        "targets": info["targets"],
        "targets_source": info["targets_source"],
        "profile": profile,
        "onnx": {"path": str(onnx_path), "sha256": file_sha256(onnx_path)},
        "built_onnx": ({"path": str(precision_onnx), "sha256": file_sha256(precision_onnx)}
                       if precision_onnx is not None else {"path": str(onnx_path), "sha256": file_sha256(onnx_path)}),
        "model": _model_record(meta),
        "threshold": float(meta["threshold"]) if meta.get("threshold") else None,
        "plugins": ([{**plugin_descriptor(), "layers": len(network["plugin_layers"])}]
                    if network["plugin_layers"] else []),
        "onnx_fixes_for_tensorrt": fixes,
        "network": {k: v for k, v in network.items() if k != "plugin_layers"} | {
            "plugin_layers": [p["name"] for p in network["plugin_layers"]]},
        "build_seconds": round(build_seconds, 2),
        "convert_seconds": round(convert_seconds, 2),
        "builder_threads": threads,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "toolkit_version": __version__,
        "warnings": info["warnings"],
        **record,
    }
    built_onnx = precision_onnx if precision_onnx is not None else onnx_path
    side["polygraphy"] = write_check(plan, built_onnx, precision, be.name,
                                     {name: p["opt"] for name, p in profile.items()}, bool(network["plugin_layers"]))
    try:
        atomic_write_bytes(plan, lambda tmp: Path(tmp).write_bytes(plan_bytes))
        atomic_write_json(side_path, side)
    except BaseException:
        for path in (plan, *check_paths(plan)):
            path.unlink(missing_ok=True)
        raise
    if cache_bytes is not None:
        atomic_write_bytes(timing_cache, lambda tmp: Path(tmp).write_bytes(cache_bytes))
    log(f"wrote {plan} and {side_path.name} ({build_seconds:.1f} s build); Polygraphy check: "
        f"{side['polygraphy']['script']}")
    return BuildResult(plan=plan, sidecar=side_path, build_seconds=build_seconds, precision=precision,
                       backend=be.label, precision_onnx=precision_onnx, network=network, summary=side)


__all__ = ["build_engine", "BuildResult", "EngineBuildError", "load_export", "tensorrt_ready", "PRECISIONS",
           "default_plan_path", "DEFAULT_BATCH"]
