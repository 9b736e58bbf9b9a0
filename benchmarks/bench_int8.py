"""Q/DQ INT8 in ONNX Runtime vs PyTorch FP32 on the CPU (goal: >= 2.5x), side by side.

Why: the INT8 ONNX that ``build-engine --int8`` writes is a first-class output that runs in ONNX
Runtime; this measures what it buys on a CPU, against PyTorch FP32 and ONNX Runtime FP32/FP16 of
the same export, in one run with interleaved rounds (every runtime sees the same machine load).
Weights are random unless --checkpoint gives a tiny run (speed does not depend on the weights);
INT8 calibration uses clips of a small synthetic scene (its training videos), as a user would.
Also reported: how the FP16 ONNX runs here (ONNX Runtime's CPU provider computes most FP16 ops
in FP32 behind inserted casts, so FP16 is not a CPU speed path). Run:

    python benchmarks/bench_int8.py [--threads 1] [--presets tiny paper] [--write docs/benchmarks.md]

It prints a table and, with --write, replaces the section "INT8 Q/DQ in ONNX Runtime (CPU)" of
that Markdown file, or appends it at the end when absent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from m2s2l_deploy.engine.calibration import calibration_set
from m2s2l_deploy.engine.precision import to_fp16, to_int8
from m2s2l_deploy.files import atomic_write_bytes
from m2s2l_deploy.model.checkpoint import load_checkpoint
from m2s2l_deploy.export.exporter import export_onnx
from m2s2l_deploy.runners import OnnxRunner, TorchRunner

from _common import checkpoint_for, machine, timed_rounds, write_section

SECTION = "## INT8 Q/DQ in ONNX Runtime (CPU)"


def fp16_ops_in_ort(path: Path) -> tuple[int, int]:
    """(compute nodes ORT runs in FP16, FP16 compute nodes in the file) after ORT's own graph transforms."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        after = onnx.shape_inference.infer_shapes(onnx.load(so.optimized_model_filepath))
    before = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    compute = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "Sub", "Div", "Sigmoid", "Erf", "Tanh",
               "Einsum", "LayerNormalization", "AveragePool", "ReduceMean", "ReduceSum"}

    def count(model):
        types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
        return sum(1 for n in model.graph.node if n.op_type in compute
                   and any(types.get(o) == onnx.TensorProto.FLOAT16 for o in n.output))
    return count(after), count(before)


def quantizable_share(path: Path, x: np.ndarray, threads: int, runs: int) -> float:
    """Share of ORT FP32 kernel time spent in the op types INT8 quantizes (ORT's profiler).

    An upper bound on what INT8 can save: even infinitely fast quantized ops leave the rest.
    """
    import json

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level, so.enable_profiling = threads, 3, True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(None, {"clip": x})
        events = json.load(open(sess.end_profiling()))
    spent = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e["args"]["op_name"]
            spent[op] = spent.get(op, 0) + e["dur"]
    total = sum(spent.values()) or 1
    return sum(spent.get(op, 0) for op in ("Conv", "ConvTranspose", "MatMul", "Gemm")) / total


def run_preset(preset: str, args, tmp: Path, calib_root: Path) -> list[dict]:
    run = checkpoint_for(preset, tmp, args.checkpoint)
    ckpt = load_checkpoint(run)
    cfg = ckpt.model_config
    fp32 = export_onnx(ckpt, tmp / f"{preset}-loop.onnx", scan="loop").paths[0]
    n_calib = args.calib_clips if preset == "tiny" else min(args.calib_clips, 8)   # speed does not depend on it
    clips, _ = calibration_set(ckpt.contract, calib_root, n_calib, tmp / "calibration")
    t0 = time.perf_counter()
    q, qinfo = to_int8(onnx.load(str(fp32)), clips, "minmax")
    quant_s = time.perf_counter() - t0
    int8 = tmp / f"{preset}-loop-int8.onnx"
    atomic_write_bytes(int8, lambda p: Path(p).write_bytes(q.SerializeToString()))
    half, _ = to_fp16(onnx.load(str(fp32)))
    fp16 = tmp / f"{preset}-loop-fp16.onnx"
    atomic_write_bytes(fp16, lambda p: Path(p).write_bytes(half.SerializeToString()))
    in_fp16, total_fp16 = fp16_ops_in_ort(fp16)
    print(f"{preset}: INT8 Q/DQ {qinfo['quantize_nodes']} Q / {qinfo['dequantize_nodes']} DQ nodes "
          f"({quant_s:.1f} s calibration+quantization); FP16 file has {total_fp16} FP16 compute nodes, ORT CPU "
          f"keeps {in_fp16} of them in FP16", flush=True)
    torch.set_num_threads(args.threads)
    torch_runner = TorchRunner(ckpt)
    runners = {"onnxruntime fp32": OnnxRunner(fp32, threads=args.threads),
               "onnxruntime int8 (Q/DQ)": OnnxRunner(int8, threads=args.threads),
               "onnxruntime fp16": OnnxRunner(fp16, threads=args.threads)}
    rows = []
    rng = np.random.default_rng(0)
    batches = args.batches if preset == "tiny" else [1]
    for batch in batches:
        warm, rounds = (args.warmup, args.iters) if preset == "tiny" else (1, 3)
        x = rng.uniform(-1, 1, (batch, cfg.clip_len, cfg.in_channels, cfg.height, cfg.width)).astype(np.float32)
        fns = {"pytorch fp32": lambda: torch_runner.infer(x)}
        fns.update({name: (lambda r=r: r.infer(x)) for name, r in runners.items()})
        t = timed_rounds(fns, warm, rounds, shuffle=True)
        share = quantizable_share(fp32, x, args.threads, 2 if preset == "tiny" else 1)
        for name, sec in t.items():
            row = dict(preset=preset, batch=batch, runtime=name, s=sec, clips_s=batch / sec, warmup=warm, iters=rounds,
                       vs_pytorch=t["pytorch fp32"] / sec, vs_ort=t["onnxruntime fp32"] / sec,
                       fp16_note=f"{in_fp16}/{total_fp16}", share=share)
            rows.append(row)
            print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| preset | batch | runtime | ms / call (median) | clips/s | warm-up + timed calls | vs PyTorch FP32 | vs ORT FP32 |",
             "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['batch']} | {r['runtime']} | {1000 * r['s']:.1f} | {r['clips_s']:.2f} | "
                     f"{r['warmup']} + {r['iters']} | {r['vs_pytorch']:.2f}x | {r['vs_ort']:.2f}x |")
    return "\n".join(lines)


def goals(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if r["runtime"].startswith("onnxruntime int8"):
            ort32 = next(x for x in rows if x["preset"] == r["preset"] and x["batch"] == r["batch"]
                         and x["runtime"] == "onnxruntime fp32")
            bound = ort32["vs_pytorch"] / (1 - r["share"])
            lines.append(f"- ORT INT8 >= 2.5x PyTorch FP32, {r['preset']} batch {r['batch']}: {r['vs_pytorch']:.2f}x — "
                         f"{'met' if r['vs_pytorch'] >= 2.5 else 'not met'} (INT8 vs ORT FP32: {r['vs_ort']:.2f}x; "
                         f"Conv/ConvTranspose/MatMul/Gemm take {100 * r['share']:.0f}% of ORT FP32 kernel time, so "
                         f"even free INT8 ops would reach at most {bound:.2f}x PyTorch)")
    return "\n".join(lines)


def section(rows: list[dict], args, header: str) -> str:
    fp16 = {r["preset"]: r["fp16_note"] for r in rows}
    return "\n".join([
        SECTION, "",
        f"`python benchmarks/bench_int8.py --threads {args.threads} --presets {' '.join(args.presets)}` "
        f"({time.strftime('%Y-%m-%d')}), {header}.",
        "",
        "Same loop-scan export in every ONNX Runtime row; INT8 = `onnxruntime.quantization` QDQ (per-channel "
        "symmetric INT8 weights, symmetric INT8 activations, `QuantizeBias=False`, Conv/ConvTranspose/MatMul/Gemm "
        f"only, no Q/DQ in the scans), calibrated with min-max on {args.calib_clips} (tiny) / "
        f"{min(args.calib_clips, 8)} (paper) clips of a synthetic scene's training videos. Random weights (speed does not depend on them). Interleaved rounds in shuffled order, median; "
        f"{args.threads} thread(s) for both PyTorch and ONNX Runtime.",
        "",
        table(rows), "",
        "Goal of the engine work:", "",
        goals(rows), "",
        "FP16 rows, for completeness: ONNX Runtime's CPU provider has few FP16 kernels and wraps the other FP16 "
        "nodes in casts to FP32 (compute nodes it keeps in FP16 / FP16 compute nodes in the file: "
        + ", ".join(f"{p} {v}" for p, v in fp16.items()) + "), so on a CPU FP16 costs time; it exists for "
        "TensorRT.", "",
        "Reading the numbers: Q/DQ INT8 only speeds up the quantized convolutions and matrix products. Most of "
        "this model's CPU time is elsewhere — the selective scans (kept in FP32 on purpose), the element-wise work "
        "around them and the FP32 score head — and every quantized op pays a Quantize/Dequantize pair around it, "
        "so the whole-model gain is bounded by the share of time in Conv/MatMul.", ""])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="tiny batches (paper: 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--calib-clips", type=int, default=32)
    p.add_argument("--checkpoint", help="a trained tiny run to use instead of random weights")
    p.add_argument("--write", type=Path, help="Markdown file whose INT8 section to replace or append")
    args = p.parse_args(argv)
    from m2s2l_deploy.data.synth import generate_scene

    header = machine("torch", "onnxruntime")
    print(header)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_int8_") as tmp:
        tmp = Path(tmp)
        calib_root = tmp / "scene"
        generate_scene(calib_root, seed=5, n_train=2, n_test=1, train_frames=40, test_frames=12)
        for preset in args.presets:
            rows += run_preset(preset, args, tmp, calib_root)
    print(table(rows))
    print(goals(rows))
    if args.write:
        write_section(args.write, SECTION, section(rows, args, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
