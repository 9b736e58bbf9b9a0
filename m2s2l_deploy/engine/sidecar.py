"""The JSON sidecar written next to every plan (``NAME.plan.json``) and the checks made with it.

A TensorRT plan is opaque and tied to a TensorRT version, a set of GPUs, a model and (here) a
plugin. The sidecar records all of that when the plan is built, so a runner can refuse a plan
that does not match, with a sentence instead of a crash deep inside TensorRT:

- ``check_plan``: the plan file is the one the sidecar describes (sha256 and size);
- ``check_model``: the plan was built from this checkpoint (weights sha256 recorded in the
  export's metadata) and/or from this ONNX (sha256 of the source ONNX);
- ``check_device``: the GPU's compute capability is one the plan targets (TensorRT-RTX never
  runs on 9.x/10.x data-centre GPUs such as the H100), and the installed backend and version are
  the ones that built it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..files import file_sha256

FORMAT = "m2s2l-deploy/engine/1"
# TensorRT-RTX's default targets when none are set: its docs say engines run on compute
# capability 8.0, 8.6, 8.9, 12.0 and later; it does not run on 9.x / 10.x (H100, B200).
RTX_DEFAULT_TARGETS = ["8.0", "8.6", "8.9", "12.0", "12.1"]
RTX_UNSUPPORTED_MAJORS = (9, 10)


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU a runner would execute on."""

    name: str
    compute_capability: tuple[int, int]

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def sidecar_path(plan) -> Path:
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_sidecar(plan) -> dict:
    """Read and check the sidecar of ``plan`` (and that the plan is the file it describes)."""
    plan = Path(plan)
    if not plan.is_file():
        raise UserError(f"engine plan {plan} does not exist")
    path = sidecar_path(plan)
    if not path.is_file():
        raise UserError(f"{plan} has no sidecar {path.name}: rebuild it with `m2s2l-deploy build-engine` "
                        "(the sidecar records the model, backend and GPUs a plan is valid for)")
    try:
        side = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"sidecar {path} is not readable JSON ({type(e).__name__})") from None
    if not isinstance(side, dict) or side.get("format") != FORMAT:
        raise UserError(f"{path} is not an m2s2l-deploy engine sidecar (format {FORMAT})")
    check_plan(plan, side)
    return side


def check_plan(plan: Path, side: dict) -> None:
    want = side.get("plan", {})
    if plan.stat().st_size != want.get("bytes") or file_sha256(plan) != want.get("sha256"):
        raise UserError(f"{plan} is not the plan its sidecar describes (sha256 differs): rebuild it or restore "
                        "the matching pair")


def check_model(side: dict, checkpoint_sha256: str | None = None, checkpoint_name: str = "the checkpoint",
                onnx=None, plan_name: str = "plan") -> None:
    """Refuse a plan built from another model than a checkpoint (the sha256 of its weights, which
    the caller reads: the engine layer never opens PyTorch checkpoints) or ``onnx`` (file)."""
    if checkpoint_sha256 is not None:
        want = side.get("model", {}).get("checkpoint_sha256")
        if want != checkpoint_sha256:
            raise UserError(f"{plan_name} was built from another model than checkpoint {checkpoint_name} "
                            "(weights sha256 differs)")
    if onnx is not None:
        onnx = Path(onnx)
        if not onnx.is_file():
            raise UserError(f"ONNX file {onnx} does not exist")
        digest = file_sha256(onnx)
        known = {side.get("onnx", {}).get("sha256"), side.get("built_onnx", {}).get("sha256")}
        if digest not in known:
            raise UserError(f"{plan_name} was not built from {onnx} (ONNX sha256 differs)")


def check_device(side: dict, device: DeviceInfo, plan_name: str = "plan") -> None:
    """Refuse a GPU the plan was not built for (and TensorRT-RTX on compute capability 9.x/10.x)."""
    backend = side.get("backend", {})
    if backend.get("name") == "tensorrt-rtx" and device.compute_capability[0] in RTX_UNSUPPORTED_MAJORS:
        raise UserError(f"{plan_name} is a TensorRT-RTX plan and TensorRT-RTX does not run on compute capability "
                        f"{device.cc} ({device.name}); use a GPU with {', '.join(side.get('targets', RTX_DEFAULT_TARGETS))}"
                        " or build with full TensorRT on this GPU")
    targets = side.get("targets") or []
    if targets and device.cc not in targets:
        raise UserError(f"{plan_name} was built for compute capability {', '.join(targets)}, not {device.cc} "
                        f"({device.name}): rebuild it for this GPU")


def check_backend(side: dict, name: str, version: str, plan_name: str = "plan") -> None:
    """Plans only load in the TensorRT flavour and version that built them."""
    want = side.get("backend", {})
    if want.get("name") != name or want.get("version") != version:
        raise UserError(f"{plan_name} was built by {want.get('name')} {want.get('version')} but {name} {version} is "
                        "installed: plans load only in the TensorRT version that built them; rebuild it")
