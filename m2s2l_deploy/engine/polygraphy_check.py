"""Next to every plan: a Polygraphy data loader and the two commands that check the plan.

Why Polygraphy: it is the tool TensorRT users already debug engines with (NVIDIA's own). A plan
is opaque, and this machine cannot run one, so the most useful thing to hand a user on a TensorRT
machine is the check in the form they know: ONNX Runtime on the ONNX the plan was built from
versus the plan itself, on the same inputs, compared output by output with tolerances. What the
toolkit knows and Polygraphy cannot guess is written down for it:

- ``NAME_polygraphy_data.py``: ``load_data()`` yields feeds such as ``{"clip": (B, T, C, H,
  W)}`` float32 in [-1, 1] (the input contract's range) at the profile's optimal batch,
  deterministic (seeded), numpy only;
- ``NAME.plan.polygraphy.sh``: step 1 runs ONNX Runtime on that ONNX and saves its outputs (any
  machine, CPU is fine; tested here), step 2 runs the plan with TensorRT and compares with them
  (needs a GPU the plan targets and the TensorRT that built it; never run here). Tolerances
  depend on the precision. For TensorRT-RTX plans step 2 sets ``POLYGRAPHY_USE_TENSORRT_RTX=1``.

The domain verdict (ΔAUC, score correlation) stays with ``m2s2l-deploy validate --engine``; this
check answers the narrower question "does the plan compute what its ONNX computes". Plans holding
the SelectiveScan Python plugin cannot be loaded by Polygraphy's command line (it loads plugin
libraries, not Python creators), so their step 2 says to use ``validate --engine`` instead.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ..files import atomic_write_bytes

BATCHES = 2                 # feeds the data loader yields
SEED = 0
# (rtol, atol) per plan precision, against ONNX Runtime on the ONNX the plan was built from
TOLERANCES = {"fp32": (1e-3, 1e-4), "fp16": (2e-2, 1e-2), "int8": (0.25, 0.1)}


def check_paths(plan) -> tuple[Path, Path, Path]:
    """(data loader script, command script, ONNX Runtime outputs) beside ``plan``.

    Polygraphy imports the data loader as a module named after its file, so that name holds no dot.
    """
    plan = Path(plan)
    module = plan.stem.replace(".", "_") + "_polygraphy_data.py"
    return (plan.with_name(module), plan.with_name(plan.name + ".polygraphy.sh"),
            plan.with_name(plan.name + ".onnxrt_outputs.json"))


def data_loader_script(shapes: dict[str, list[int]], batches: int = BATCHES, seed: int = SEED) -> str:
    """Python source of a Polygraphy data loader feeding each input of ``shapes`` (fixed shapes)."""
    listed = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
    feed = ", ".join(f"{k!r}: rng.uniform(-1.0, 1.0, size={tuple(v)}).astype(np.float32)" for k, v in shapes.items())
    return f'''"""Polygraphy data loader for an m2s2l-deploy plan: {batches} feeds of {listed}, float32 in
[-1, 1] (frames scaled x/127.5 - 1, as the input contract prepares them), seeded, so both steps of
the check see the same inputs. Usage: polygraphy run ... --data-loader-script THIS_FILE"""

import numpy as np


def load_data():
    rng = np.random.default_rng({seed})
    for _ in range({batches}):
        yield {{{feed}}}
'''


def commands(plan: Path, onnx: Path, precision: str, backend: str, has_plugin: bool) -> dict[str, list[str]]:
    """argv of both steps, with file names relative to the plan's folder."""
    data, _, outputs = (p.name for p in check_paths(plan))
    rtol, atol = TOLERANCES[precision]
    onnx_arg = onnx.name if onnx.resolve().parent == plan.resolve().parent else str(onnx.resolve())
    step1 = ["polygraphy", "run", onnx_arg, "--onnxrt", "--data-loader-script", data, "--save-outputs", outputs]
    step2 = ["polygraphy", "run", plan.name, "--model-type", "engine", "--trt", "--data-loader-script", data,
             "--load-outputs", outputs, "--rtol", f"{rtol:g}", "--atol", f"{atol:g}"]
    if backend == "tensorrt-rtx":
        step2 = ["env", "POLYGRAPHY_USE_TENSORRT_RTX=1", *step2]
    return {"onnxrt": step1, "trt": [] if has_plugin else step2}


def write_check(plan, onnx, precision: str, backend: str, shapes: dict[str, list[int]], has_plugin: bool) -> dict:
    """Write the data loader and the command script beside ``plan``; returns what the sidecar records."""
    plan, onnx = Path(plan), Path(onnx)
    data_path, script_path, _ = check_paths(plan)
    cmds = commands(plan, onnx, precision, backend, has_plugin)
    source = data_loader_script(shapes)
    atomic_write_bytes(data_path, lambda tmp: Path(tmp).write_text(source))
    lines = ["#!/bin/sh",
             f"# Check {plan.name} against ONNX Runtime with Polygraphy (pip install polygraphy onnxruntime).",
             "set -e", 'cd "$(dirname "$0")"',
             "# 1. ONNX Runtime on the ONNX the plan was built from: any machine, CPU is fine.",
             shlex.join(cmds["onnxrt"])]
    if cmds["trt"]:
        lines += ["# 2. the plan with TensorRT, compared output by output: needs a GPU the plan targets and",
                  "#    the TensorRT version that built it (see the sidecar).", shlex.join(cmds["trt"])]
    else:
        lines += ["# 2. this plan holds the SelectiveScan Python plugin, which Polygraphy's command line cannot",
                  "#    load; check it with: m2s2l-deploy validate --engine PLAN --checkpoint RUN --data ROOT"]
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(script_path, lambda tmp: Path(tmp).write_text(text))
    script_path.chmod(0o755)
    return {"data_loader": data_path.name, "script": script_path.name, "onnxrt": cmds["onnxrt"], "trt": cmds["trt"],
            "rtol_atol": list(TOLERANCES[precision])}
