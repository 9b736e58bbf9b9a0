"""Checkpoints: ``model.safetensors`` (weights and score buffers) + ``config.json``. Never pickle.

torch and safetensors are imported only where weights are read or written: reading a run's
config and hashing its weights (``load_checkpoint(..., with_weights=False)``) works without them,
so an ONNX-only install can still check an ONNX file against the checkpoint it came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..contract import InputContract
from ..errors import UserError
from ..files import atomic_write_bytes, atomic_write_json, file_sha256
from .config import ModelConfig

if TYPE_CHECKING:
    from .m2s2l import M2S2L

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "m2s2l-deploy/checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded run directory: model config, input contract, the rest of config.json, weights."""

    path: Path
    model_config: ModelConfig
    contract: InputContract
    info: dict = field(default_factory=dict)  # training summary, calibration, ...
    state: dict | None = None

    def build_model(self) -> M2S2L:
        from .m2s2l import M2S2L

        model = M2S2L(self.model_config)
        if self.state is not None:
            missing, unexpected = model.load_state_dict(self.state, strict=False)
            if missing or unexpected:
                raise UserError(f"checkpoint {self.path} does not match preset "
                                f"{self.model_config.preset}: missing {len(missing)}, unexpected {len(unexpected)} tensors")
        return model.eval()

    @property
    def weights_sha256(self) -> str:
        return file_sha256(self.path / WEIGHTS)

    @property
    def threshold(self) -> float | None:
        return self.info.get("calibration", {}).get("threshold")


def save_checkpoint(run_dir: Path, model: M2S2L, contract: InputContract, info: dict) -> Path:
    """Write weights then config (config last: a run dir with a config always has its weights)."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(run_dir / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    config = {"format": FORMAT, "toolkit_version": __version__, "model": model.cfg.to_dict(),
              "contract": contract.to_dict(), **info}
    atomic_write_json(run_dir / CONFIG, config)
    return run_dir


def load_checkpoint(run_dir, with_weights: bool = True) -> Checkpoint:
    """Read a run directory; every way it can be broken is a one-line UserError."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"checkpoint folder {run_dir} does not exist")
    if run_dir.is_file():
        if run_dir.name in (WEIGHTS, CONFIG):
            run_dir = run_dir.parent
        else:
            raise UserError(f"{run_dir} is a file; pass the run folder holding {WEIGHTS} and {CONFIG}")
    for name in (CONFIG, WEIGHTS):
        if not (run_dir / name).is_file():
            raise UserError(f"checkpoint folder {run_dir} has no {name} (not a training run?)")
    try:
        config = json.loads((run_dir / CONFIG).read_text())
        model_cfg = ModelConfig.from_dict(config["model"])
        contract = InputContract.from_dict(config["contract"])
    except UserError as e:
        raise UserError(f"checkpoint config {run_dir / CONFIG} is invalid: {e}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"checkpoint config {run_dir / CONFIG} is corrupt ({type(e).__name__}: {e})") from None
    info = {k: v for k, v in config.items() if k not in ("model", "contract")}
    state = None
    if with_weights:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(str(run_dir / WEIGHTS))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise UserError(f"checkpoint weights {run_dir / WEIGHTS} are corrupt or not safetensors ({e})") from None
    ckpt = Checkpoint(run_dir, model_cfg, contract, info, state)
    if with_weights:
        _check_shapes(ckpt)
    return ckpt


def _check_shapes(ckpt: Checkpoint) -> None:
    from .m2s2l import M2S2L

    expected = {k: v.shape for k, v in M2S2L(ckpt.model_config).state_dict().items()}
    for k, shape in expected.items():
        if k not in ckpt.state:
            raise UserError(f"checkpoint weights lack tensor '{k}' required by preset {ckpt.model_config.preset}")
        if tuple(ckpt.state[k].shape) != tuple(shape):
            raise UserError(f"checkpoint tensor '{k}' has shape {tuple(ckpt.state[k].shape)}, "
                            f"expected {tuple(shape)} for its config")


def model_from_checkpoint(run_dir) -> tuple[M2S2L, Checkpoint]:
    ckpt = load_checkpoint(run_dir)
    return ckpt.build_model(), ckpt
