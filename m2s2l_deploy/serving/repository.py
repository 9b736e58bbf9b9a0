"""``m2s2l-deploy package``: a Triton model repository for an exported model.

Layout (Triton's standard): ``OUT_REPO/<name>/config.pbtxt`` + ``OUT_REPO/<name>/1/<model file>``.

Platforms:
- ``onnxruntime``: ``1/model.onnx`` run by Triton's ONNX Runtime backend. Loop or chunked scan only:
  the plugin form's ``SelectiveScan`` node is meant for our TensorRT plugin. Optionally ORT's TensorRT
  accelerator (Triton then builds TensorRT engines on its own GPU): fp32/fp16, or int8 for a Q/DQ ONNX.
- ``tensorrt_plan``: ``1/model.plan`` for Triton's TensorRT backend. Only plans built by full TensorRT
  without our Python plugin: that backend has no Python and cannot load TensorRT-RTX plans. How a plan
  was built is read from its JSON sidecar (keys ``backend``, ``plugins``).
- ``python``: ``1/model.py`` (a Python-backend model around our ``OnnxRunner``), ``1/model.onnx`` and
  the few modules of this package the runner needs, vendored as ``1/m2s2l_runtime``.

Every config is built as Triton's own protobuf message (``tritonclient``'s ``model_config_pb2``),
written as text, then read back from disk and parsed with that schema before the repository is moved
into place (built in a temporary folder, then renamed), so a failed package leaves nothing behind.
Input and output dims come from the ONNX (shape inference where the file leaves them symbolic); the
input contract, alert threshold and ONNX hash travel in the config's ``parameters`` so a client can
prepare frames exactly as the model expects.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import errors
from ..errors import UserError
from ..files import file_sha256
from . import MODEL_NAME, require

PLATFORMS = ("onnxruntime", "tensorrt_plan", "python")
DEVICES = ("auto", "cpu", "gpu")
TRT_PRECISIONS = ("auto", "fp32", "fp16", "int8")
MAX_BATCH_LIMIT = 1024
MAX_INSTANCES = 64
ONNX_FORMAT = "m2s2l-deploy/onnx"
# ONNX TensorProto element type -> Triton data type (only what an export can produce).
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16", 6: "TYPE_INT32",
                   7: "TYPE_INT64", 3: "TYPE_INT8", 2: "TYPE_UINT8", 9: "TYPE_BOOL"}
# Files of this package the Python-backend model needs, vendored under 1/m2s2l_runtime/.
_VENDORED = ("errors.py", "contract.py", "runners/base.py", "runners/onnx_runner.py", "runners/scan_op.py",
             "export/scan_graph.py", "ops/kernels/scan_numba_forward.py")
PYTHON_REQUIREMENTS = ("numpy", "onnx", "onnxruntime", "opencv-python-headless")
# A plugin export's scans run as one compiled op (runners/scan_op.py) when these are installed.
PLUGIN_REQUIREMENTS = ("numba", "onnxruntime-extensions")


@dataclass
class TensorInfo:
    name: str
    data_type: str          # Triton TYPE_*
    dims: list[int]         # without the batch axis; -1 = variable


@dataclass
class OnnxInfo:
    """What packaging needs to know about an exported ONNX file."""

    path: Path
    metadata: dict[str, str]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    batch_dynamic: bool
    fixed_batch: int | None
    has_qdq: bool
    has_plugin_node: bool
    external_data: bool

    @property
    def scan_form(self) -> str:
        return self.metadata.get("scan_form", "?")


@dataclass
class PackageResult:
    model_dir: Path
    platform: str
    config_path: Path
    files: list[str]
    max_batch: int
    instances: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model_dir"], d["config_path"] = str(self.model_dir), str(self.config_path)
        return d


# -- reading an export ------------------------------------------------------------------------
def _dims(value_info) -> tuple[list[int | str], int]:
    t = value_info.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim], t.elem_type


def _triton_type(elem_type: int, what: str) -> str:
    if elem_type not in _ONNX_TO_TRITON:
        raise UserError(f"{what} has ONNX element type {elem_type}, which Triton cannot serve here")
    return _ONNX_TO_TRITON[elem_type]


def inspect_onnx(path) -> OnnxInfo:
    """Read an m2s2l-deploy export: metadata, tensor dims (batch axis split off), form, Q/DQ nodes."""
    onnx = errors.require("onnx", "packaging an ONNX file", "onnx")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors share no public base class
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if not meta.get("format", "").startswith(ONNX_FORMAT) or "contract" not in meta:
        raise UserError(f"{path} was not exported by m2s2l-deploy (no input contract in its metadata)")
    external = any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    # The exporter names non-batch output dims symbolically; ONNX shape inference recovers them.
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    for out in stripped.graph.output:
        for d in out.type.tensor_type.shape.dim[1:]:
            if not d.HasField("dim_value"):
                d.Clear()
    del stripped.graph.value_info[:]
    try:
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(stripped, data_prop=True).graph.output}
    except Exception:  # inference is a convenience here: symbolic dims then become -1
        inferred = {}
    init_names = {i.name for i in model.graph.initializer}
    inputs, outputs, batch_dims = [], [], []
    for vi, bucket in [(v, inputs) for v in model.graph.input if v.name not in init_names] + \
                      [(inferred.get(v.name, v), outputs) for v in model.graph.output]:
        dims, elem = _dims(vi)
        if not dims:
            raise UserError(f"{path}: tensor '{vi.name}' has no batch axis; export it with a batch dimension")
        batch_dims.append(dims[0])
        bucket.append(TensorInfo(vi.name, _triton_type(elem, f"tensor '{vi.name}' of {path}"),
                                 [d if isinstance(d, int) and d > 0 else -1 for d in dims[1:]]))
    fixed = [d for d in batch_dims if isinstance(d, int) and d > 0]
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    return OnnxInfo(path=path, metadata=meta, inputs=inputs, outputs=outputs,
                    batch_dynamic=not fixed, fixed_batch=fixed[0] if fixed else None,
                    has_qdq=any(op in ("QuantizeLinear", "DequantizeLinear") for _, op in ops),
                    has_plugin_node=any(op == "SelectiveScan" for _, op in ops) or meta.get("scan_form") == "plugin",
                    external_data=external)


def _check_export(info: OnnxInfo, platform: str) -> None:
    """Refuse exports a Triton platform cannot serve with dynamic batching, each in one line."""
    p = info.path
    if info.metadata.get("graph", "whole") != "whole":
        raise UserError(f"{p} is one half of a --split export; its per-stream feature cache does not survive "
                        "dynamic batching across cameras: package the whole-graph export instead")
    if not info.batch_dynamic:
        raise UserError(f"{p} was exported with a fixed batch of {info.fixed_batch}; Triton's dynamic batching "
                        "needs an export with --batch dynamic")
    if info.external_data:
        raise UserError(f"{p} keeps its weights in external data files; export it as a single file to package it")
    if platform == "onnxruntime" and info.has_plugin_node:
        raise UserError(f"{p} is the plugin form: its SelectiveScan node needs our custom op, which Triton's "
                        "ONNX Runtime backend does not have; package the loop or chunked form")


# -- the config --------------------------------------------------------------------------------
def _pb():
    return require("tritonclient.grpc.model_config_pb2", "writing a Triton model config")


def _add_tensors(repeated, tensors: list[TensorInfo], pb) -> None:
    for t in tensors:
        entry = repeated.add(name=t.name, data_type=pb.DataType.Value(t.data_type))
        if t.dims:
            entry.dims.extend(t.dims)
        else:               # a per-clip scalar such as frame_score (batch,): Triton needs dims [1] + reshape []
            entry.dims.append(1)
            entry.reshape.SetInParent()


def build_config(info: OnnxInfo, platform: str, name: str, max_batch: int, instances: int, device: str,
                 queue_delay_us: int, threads: int | None, ort_tensorrt: bool, trt_precision: str):
    """The ModelConfig message (not yet written)."""
    pb = _pb()
    cfg = pb.ModelConfig(name=name, max_batch_size=max_batch)
    if platform == "onnxruntime":
        cfg.platform = "onnxruntime_onnx"
        cfg.default_model_filename = "model.onnx"
    elif platform == "tensorrt_plan":
        cfg.platform = "tensorrt_plan"
        cfg.default_model_filename = "model.plan"
    else:
        cfg.backend = "python"
    _add_tensors(cfg.input, info.inputs, pb)
    _add_tensors(cfg.output, info.outputs, pb)
    cfg.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    kind = {"auto": pb.ModelInstanceGroup.KIND_AUTO, "cpu": pb.ModelInstanceGroup.KIND_CPU,
            "gpu": pb.ModelInstanceGroup.KIND_GPU}[device]
    cfg.instance_group.add(count=instances, kind=kind)

    params = {"m2s2l_contract": info.metadata["contract"], "m2s2l_scan_form": info.scan_form,
              "m2s2l_checkpoint_sha256": info.metadata.get("checkpoint_sha256", ""),
              "m2s2l_preset": info.metadata.get("preset", "")}
    if "threshold" in info.metadata:
        params["m2s2l_threshold"] = info.metadata["threshold"]
    if platform == "python":
        params["onnx_file"] = "model.onnx"
        if threads:
            params["intra_op_threads"] = str(threads)
    elif platform == "onnxruntime" and threads:
        params["intra_op_thread_count"] = str(threads)
    for k, v in params.items():
        cfg.parameters[k].string_value = v

    if ort_tensorrt:
        acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        shape = lambda b: f"{info.inputs[0].name}:{'x'.join(str(d) for d in [b, *info.inputs[0].dims])}"  # noqa: E731
        acc.parameters.update({
            "precision_mode": trt_precision.upper(),
            "max_workspace_size_bytes": str(1 << 30),
            "trt_engine_cache_enable": "1",
            # One optimisation profile over the whole batch range: no engine rebuild per batch size.
            "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(max(1, max_batch // 2)),
            "trt_profile_max_shapes": shape(max_batch),
        })
    return cfg


def read_config(path) -> object:
    """Parse a config.pbtxt with Triton's schema; a malformed file is a one-line UserError."""
    from google.protobuf import text_format

    pb = _pb()
    path = Path(path)
    try:
        return text_format.Parse(path.read_text(), pb.ModelConfig())
    except text_format.ParseError as e:
        raise UserError(f"{path} is not a valid Triton model config: {e}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def write_config(cfg, path: Path) -> None:
    """Write as text, read it back with the schema, and insist on the same message."""
    from google.protobuf import text_format

    path.write_text(text_format.MessageToString(cfg))
    parsed = read_config(path)
    if parsed != cfg:
        raise RuntimeError(f"{path} does not parse back to the config that was written")


# -- TensorRT plans ------------------------------------------------------------------------------
def plan_sidecar(plan: Path) -> tuple[Path, dict]:
    """The JSON that build-engine writes next to a plan (NAME.plan.json; NAME.json also accepted)."""
    for cand in (plan.with_name(plan.name + ".json"), plan.with_suffix(".json")):
        if cand.is_file():
            try:
                data = json.loads(cand.read_text())
            except (OSError, ValueError) as e:
                raise UserError(f"sidecar {cand} of {plan} is unreadable ({type(e).__name__})") from None
            if not isinstance(data, dict):
                raise UserError(f"sidecar {cand} of {plan} is not a JSON object")
            return cand, data
    raise UserError(f"{plan} has no JSON sidecar ({plan.name}.json) saying how it was built; only plans from "
                    "`m2s2l-deploy build-engine` can be packaged")


def _entry(value, key: str):
    """Sidecar fields are either plain values or records such as {"name": ..., "version": ...}."""
    return value.get(key) if isinstance(value, dict) else value


def check_plan(plan: Path) -> tuple[Path, dict]:
    """Refuse plans that stock Triton's TensorRT backend cannot load, in one line saying why."""
    if not plan.is_file():
        raise UserError(f"engine file {plan} does not exist" if not plan.exists() else f"{plan} is not a file")
    sidecar_path, sidecar = plan_sidecar(plan)
    backend = str(_entry(sidecar.get("backend"), "name") or "").lower().replace("-", "_")
    plugins = sidecar.get("plugins") or []
    if backend in ("tensorrt_rtx", "trt_rtx", "rtx"):
        raise UserError(f"{plan} is a TensorRT-RTX plan, which stock Triton's TensorRT backend cannot load; "
                        "package the loop/chunked ONNX with --platform onnxruntime --ort-tensorrt instead")
    if plugins:
        names = ", ".join(str(_entry(p, "name")) for p in plugins)
        raise UserError(f"{plan} needs our Python plugin ({names}), which stock Triton's TensorRT backend (no Python) "
                        "cannot load; build the plan from the loop/chunked ONNX, or use --platform onnxruntime --ort-tensorrt")
    if backend != "tensorrt":
        raise UserError(f"{plan}: its sidecar names backend '{backend or '?'}', not full TensorRT; "
                        "Triton's TensorRT backend loads only plans built by full TensorRT")
    want = _entry(sidecar.get("plan"), "sha256")
    if want and file_sha256(plan) != want:
        raise UserError(f"{plan} is not the plan its sidecar {sidecar_path.name} describes (sha256 differs)")
    return sidecar_path, sidecar


def _plan_onnx(plan: Path, sidecar: dict, onnx: Path | None) -> Path:
    """The ONNX whose tensors the plan has: --onnx (checked against the sidecar), else the one it records.

    build-engine records the source export (``onnx``) and the file it actually built (``built_onnx``:
    the fp16 / Q/DQ variant, same tensor names and I/O types); either gives the dims.
    """
    recorded = [r for r in (sidecar.get("built_onnx"), sidecar.get("onnx")) if isinstance(r, dict)]
    if onnx is not None:
        hashes = {r.get("sha256") for r in recorded if r.get("sha256")}
        if hashes and file_sha256(onnx) not in hashes:
            raise UserError(f"{plan} was not built from {onnx} (its sha256 is not the one in the plan's sidecar)")
        return onnx
    for r in recorded:
        cand = Path(str(r.get("path", "")))
        cand = cand if cand.is_absolute() else plan.parent / cand
        if r.get("path") and cand.is_file() and (not r.get("sha256") or file_sha256(cand) == r["sha256"]):
            return cand
    raise UserError(f"{plan}: the ONNX it was built from is needed for its tensor dims and was not found where its "
                    "sidecar says; pass it with --onnx")


def _plan_batch_range(sidecar: dict) -> tuple[int, int] | None:
    """(min, max) batch of the plan's optimisation profile, when the sidecar records one."""
    profile = sidecar.get("profile")
    if not isinstance(profile, dict) or not profile:
        return None
    try:
        lows = [int(p["min"][0]) for p in profile.values()]
        highs = [int(p["max"][0]) for p in profile.values()]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return max(lows), min(highs)


# -- packaging -----------------------------------------------------------------------------------
def _check_options(platform, max_batch, instances, device, queue_delay_us, threads, ort_tensorrt, trt_precision, name):
    if platform not in PLATFORMS:
        raise UserError(f"--platform must be one of {', '.join(PLATFORMS)}, got '{platform}'")
    if not 1 <= max_batch <= MAX_BATCH_LIMIT:
        raise UserError(f"--max-batch must be between 1 and {MAX_BATCH_LIMIT}, got {max_batch}")
    if not 1 <= instances <= MAX_INSTANCES:
        raise UserError(f"--instances must be between 1 and {MAX_INSTANCES}, got {instances}")
    if device not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got '{device}'")
    if not 0 <= queue_delay_us <= 10_000_000:
        raise UserError(f"--queue-delay-us must be between 0 and 10000000, got {queue_delay_us}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if trt_precision not in TRT_PRECISIONS:
        raise UserError(f"--trt-precision must be one of {', '.join(TRT_PRECISIONS)}, got '{trt_precision}'")
    if not name or not all(c.isalnum() or c in "._-" for c in name) or name.startswith("."):
        raise UserError(f"--name must be letters, digits, '.', '_' or '-', got '{name}'")
    if ort_tensorrt and platform != "onnxruntime":
        raise UserError("--ort-tensorrt is an option of --platform onnxruntime (ORT's TensorRT accelerator)")
    if ort_tensorrt and device == "cpu":
        raise UserError("--ort-tensorrt needs GPU instances (--device auto or gpu): TensorRT runs on GPUs only")
    if trt_precision != "auto" and not ort_tensorrt:
        raise UserError("--trt-precision applies to --ort-tensorrt only")
    if platform == "tensorrt_plan" and device == "cpu":
        raise UserError("a TensorRT plan runs on GPU instances only; use --device auto or gpu")


def _resolve_precision(info: OnnxInfo, precision: str) -> str:
    if precision == "auto":
        return "int8" if info.has_qdq else "fp16"
    if precision == "int8" and not info.has_qdq:
        raise UserError(f"--trt-precision int8 needs a Q/DQ (explicitly quantized) ONNX; {info.path} has no "
                        "QuantizeLinear/DequantizeLinear nodes (build-engine --int8 writes one)")
    if precision != "int8" and info.has_qdq:
        raise UserError(f"{info.path} is a Q/DQ (int8) ONNX: TensorRT needs --trt-precision int8 to build it")
    return precision


def _vendor_runtime(version_dir: Path) -> list[str]:
    """Copy the runner and what it imports into 1/m2s2l_runtime (a package name no install can shadow)."""
    from .. import __version__

    pkg_src = Path(__file__).resolve().parent.parent
    dst = version_dir / "m2s2l_runtime"
    written = []
    for rel in _VENDORED:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pkg_src / rel, dst / rel)
        written.append(f"m2s2l_runtime/{rel}")
    (dst / "__init__.py").write_text(f'"""m2s2l-deploy {__version__} runtime vendored for Triton\'s Python backend."""\n'
                                     f'__version__ = "{__version__}"\n')
    written.append("m2s2l_runtime/__init__.py")
    for package in sorted({str(Path(rel).parent) for rel in _VENDORED} - {"."}):
        (dst / package / "__init__.py").write_text('"""The parts of this package the ONNX Runtime runner needs."""\n')
        written.append(f"m2s2l_runtime/{package}/__init__.py")
    return written


def package_repository(out_repo, platform: str, onnx=None, engine=None, *, name: str = MODEL_NAME,
                       max_batch: int = 8, instances: int = 1, device: str = "auto", queue_delay_us: int = 500,
                       threads: int | None = None, ort_tensorrt: bool = False, trt_precision: str = "auto",
                       force: bool = False) -> PackageResult:
    """Write OUT_REPO/<name>/ for ``platform``; see the module docstring. Nothing is left on failure."""
    _check_options(platform, max_batch, instances, device, queue_delay_us, threads, ort_tensorrt, trt_precision, name)
    notes = []
    if platform == "tensorrt_plan":
        if engine is None:
            raise UserError("--platform tensorrt_plan needs --engine PLAN")
        engine = Path(engine)
        _, sidecar = check_plan(engine)
        onnx = _plan_onnx(engine, sidecar, Path(onnx) if onnx is not None else None)
        batch_range = _plan_batch_range(sidecar)
        if batch_range is not None:
            lo, hi = batch_range
            if lo > 1:
                raise UserError(f"{engine}'s optimisation profile starts at batch {lo}; Triton's dynamic batcher "
                                "also sends batches of 1: rebuild it with a profile that starts at batch 1")
            if max_batch > hi:
                raise UserError(f"--max-batch {max_batch} exceeds {engine}'s optimisation profile (max batch {hi})")
        trt = sidecar.get("backend")
        notes.append(f"load it with a Triton whose TensorRT is {_entry(trt, 'version') or 'the version that built it'}"
                     f" on a GPU it targets ({', '.join(map(str, sidecar.get('targets') or [])) or 'the build GPU'})")
    else:
        if engine is not None:
            raise UserError(f"--engine is for --platform tensorrt_plan; --platform {platform} packages an ONNX (--onnx)")
        if onnx is None:
            raise UserError(f"--platform {platform} needs --onnx FILE (see `m2s2l-deploy export`)")
    info = inspect_onnx(onnx)
    _check_export(info, platform)
    precision = _resolve_precision(info, trt_precision) if ort_tensorrt else None
    if ort_tensorrt and info.scan_form == "loop":
        notes.append("loop form under TensorRT: long ONNX Loops build and run slowly there; the chunked form is "
                     "meant for TensorRT (check trip counts: github.com/onnx/onnx-tensorrt/issues/891)")

    out_repo = Path(out_repo)
    if out_repo.exists() and not out_repo.is_dir():
        raise UserError(f"--triton {out_repo} exists and is not a folder")
    final = out_repo / name
    if final.exists() and not force:
        raise UserError(f"{final} already exists; pass --force to replace it")
    try:
        out_repo.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out_repo}: {e.strerror}") from None

    cfg = build_config(info, platform, name, max_batch, instances, device, queue_delay_us, threads,
                       ort_tensorrt, precision or "fp32")
    tmp = out_repo / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        version_dir = tmp / "1"
        version_dir.mkdir(parents=True)
        files = []
        if platform == "tensorrt_plan":
            shutil.copyfile(engine, version_dir / "model.plan")
            files.append("1/model.plan")
        else:
            shutil.copyfile(info.path, version_dir / "model.onnx")
            files.append("1/model.onnx")
        if platform == "python":
            shutil.copyfile(Path(__file__).with_name("python_model.py"), version_dir / "model.py")
            files.append("1/model.py")
            files += [f"1/{f}" for f in _vendor_runtime(version_dir)]
            requirements = PYTHON_REQUIREMENTS + (PLUGIN_REQUIREMENTS if info.has_plugin_node else ())
            (tmp / "requirements.txt").write_text("\n".join(requirements) + "\n")
            files.append("requirements.txt")
            notes.append("the server's Python needs: pip install " + " ".join(requirements))
        write_config(cfg, tmp / "config.pbtxt")
        files.insert(0, "config.pbtxt")
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PackageResult(model_dir=final, platform=platform, config_path=final / "config.pbtxt", files=files,
                         max_batch=max_batch, instances=instances, notes=notes)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder over any previous one (the old one is removed only afterwards)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def model_contract(config) -> dict | None:
    """The input contract a packaged or served config carries in its parameters (None when absent)."""
    params = config.get("parameters", {}) if isinstance(config, dict) else {
        k: {"string_value": v.string_value} for k, v in config.parameters.items()}
    raw = params.get("m2s2l_contract", {}).get("string_value")
    return json.loads(raw) if raw else None
