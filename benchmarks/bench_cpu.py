"""Every CPU form of the model side by side, timed the one way validate times (``runners.timing``).

Why: the deployed forms are only worth shipping if they are faster than PyTorch on the hardware
every user has. This script times, in one process and one run: PyTorch with its fastest CPU
scan (the Numba kernel: the fair baseline) and with the PyTorch CPU scan (the baseline before),
ONNX Runtime on the loop, chunked and plugin exports (the plugin node through its ONNX function
body and through the compiled Numba op), split streaming, FP16 and INT8 Q/DQ copies of the plugin
form. Inputs: real footage (vtest.avi) prepared under the model's contract; every runner gets
the same batches of consecutive clips in stream order, interleaved, after warm-up calls; the
median ms per clip is reported. Weights are random unless --checkpoint gives a tiny run (speed
does not depend on them; INT8 is calibrated on the first clips of the same video). Run:

    python benchmarks/bench_cpu.py [--presets tiny paper] [--threads 2 1] [--write docs/benchmarks.md]

It prints the table and, with --write, replaces the section "CPU forms side by side" of that file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from m2s2l_deploy.contract import prepare_frames, sliding_clips
from m2s2l_deploy.data.video import read_video
from m2s2l_deploy.engine.precision import to_fp16, to_int8
from m2s2l_deploy.export.exporter import export_onnx
from m2s2l_deploy.model.checkpoint import load_checkpoint
from m2s2l_deploy.runners import OnnxRunner, TorchRunner
from m2s2l_deploy.runners import scan_op
from m2s2l_deploy.runners.timing import describe_settings, time_runners, timing_batches, timing_settings

from _common import ROOT, checkpoint_for, machine, write_section

SECTION = "## CPU forms side by side"
VTEST = ROOT.parent / "shared" / "data" / "vtest.avi"
BASELINE = "PyTorch (Numba scan)"
# name -> what it is; the order of the table
FORMS = {
    BASELINE: "the fair baseline: PyTorch CPU with the compiled Numba scan (its default on CPU)",
    "PyTorch (PyTorch CPU scan)": "PyTorch with the scan as per-step tensor ops (the CPU default before the Numba inference kernel)",
    "ORT loop": "ONNX Runtime, loop export (the export default: portable, what TensorRT and stock Triton take)",
    "ORT chunked": "ONNX Runtime, chunked (log-depth) export",
    "ORT plugin (function body)": "ONNX Runtime, plugin export, SelectiveScan run through its ONNX function body",
    "ORT plugin + Numba op": "ONNX Runtime, plugin export, SelectiveScan run by the compiled Numba op (the CPU pick)",
    "ORT split streaming (plugin + Numba op)": "ONNX Runtime, --split plugin export: each frame encoded once per stream",
    "ORT FP16 (plugin + Numba op)": "FP16 copy of the plugin export (engine/precision.to_fp16)",
    "ORT INT8 Q/DQ (plugin + Numba op)": "INT8 Q/DQ copy of the plugin export (engine/precision.to_int8, minmax)",
}
PAPER_FORMS = (BASELINE, "ORT loop", "ORT plugin + Numba op", "ORT split streaming (plugin + Numba op)")
ONE_THREAD_FORMS = (BASELINE, "ORT loop", "ORT plugin + Numba op", "ORT split streaming (plugin + Numba op)",
                    "ORT INT8 Q/DQ (plugin + Numba op)")


def build_files(ckpt, preset: str, tmp: Path, calib: np.ndarray, forms) -> dict[str, Path]:
    """The ONNX file of every ONNX form asked for (exported once per preset)."""
    files = {}
    need = set(forms)
    for name, scan in (("ORT loop", "loop"), ("ORT chunked", "chunked")):
        if name in need:
            files[name] = export_onnx(ckpt, tmp / f"{preset}-{scan}.onnx", scan=scan).paths[0]
    plugin = export_onnx(ckpt, tmp / f"{preset}-plugin.onnx", scan="plugin").paths[0]
    files["ORT plugin (function body)"] = files["ORT plugin + Numba op"] = plugin
    if "ORT split streaming (plugin + Numba op)" in need:
        export_onnx(ckpt, tmp / f"{preset}-split.onnx", scan="plugin", split=True)
        files["ORT split streaming (plugin + Numba op)"] = tmp / f"{preset}-split.onnx"
    if "ORT FP16 (plugin + Numba op)" in need:
        path = tmp / f"{preset}-plugin-fp16.onnx"
        onnx.save(to_fp16(onnx.load(str(plugin)))[0], str(path))
        files["ORT FP16 (plugin + Numba op)"] = path
    if "ORT INT8 Q/DQ (plugin + Numba op)" in need:
        path = tmp / f"{preset}-plugin-int8.onnx"
        onnx.save(to_int8(onnx.load(str(plugin)), calib, "minmax")[0], str(path))
        files["ORT INT8 Q/DQ (plugin + Numba op)"] = path
    return files


def make_runner(ckpt, files: dict, name: str, threads: int):
    if name == BASELINE:
        return TorchRunner(ckpt)
    if name.startswith("PyTorch"):
        return TorchRunner(ckpt, scan_form="cpu")
    return OnnxRunner(files[name], threads=threads, extensions=name != "ORT plugin (function body)")


def run(args) -> tuple[list[dict], str | None]:
    """Each form timed in a pair with the baseline, as ``validate`` times a candidate: the two runners
    alone in the process (no idle sessions of other forms), interleaved on the same batches."""
    rows, profiled = [], None
    tmp = Path(tempfile.mkdtemp(prefix="bench_cpu_"))
    for preset in args.presets:
        ckpt = load_checkpoint(checkpoint_for(preset, tmp, args.checkpoint))
        contract = ckpt.contract
        frames = prepare_frames(read_video(args.video, max_frames=args.frames)[0], contract)
        calib = np.stack([frames[i] for i in sliding_clips(min(len(frames), 40), contract.clip_len)])
        all_forms = list(FORMS) if preset == "tiny" else list(PAPER_FORMS)
        files = build_files(ckpt, preset, tmp, calib, all_forms)
        if preset == "tiny":
            print(f"profiling ONNX Runtime (fp32 and INT8 plugin forms, batch {max(args.batches)})", flush=True)
            profiled = profile(files, contract, frames, args.threads[0], max(args.batches))
        for threads in (args.threads if preset == "tiny" else args.threads[:1]):   # paper: minutes per row
            torch.set_num_threads(threads)
            forms = all_forms if threads == args.threads[0] else [f for f in all_forms if f in ONE_THREAD_FORMS]
            baseline = make_runner(ckpt, files, BASELINE, threads)
            for batch in args.batches:
                n, warm = (args.timing_batches, args.warmup) if preset == "tiny" else (
                    (args.paper_batches, 1) if batch == 1 else (max(1, args.paper_batches // 2), 1))
                batches = timing_batches([frames], contract.clip_len, batch, n)
                print(f"{preset}, {threads} thread(s), batch {batch}: {len(batches)} batches, each form in a pair "
                      "with the baseline", flush=True)
                t0 = time.perf_counter()
                for name in forms[1:]:
                    with make_runner(ckpt, files, name, threads) as candidate:
                        pair = {BASELINE: baseline, name: candidate}
                        results = time_runners(pair, batches, warmup=warm)
                        settings = describe_settings(timing_settings(pair, batch, warm, len(batches)))
                    base, r = results[BASELINE]["ms_per_clip"], results[name]
                    rows.append(dict(preset=preset, threads=threads, batch=batch, form=name, base_ms=base,
                                     ms_per_clip=r["ms_per_clip"], p10=r["p10_ms_per_clip"], p90=r["p90_ms_per_clip"],
                                     vs_baseline=base / r["ms_per_clip"], n_batches=r["n_batches"], warmup=warm,
                                     settings=settings))
                    print(f"  {name:42s} {r['ms_per_clip']:9.2f} ms/clip, baseline {base:8.2f}: "
                          f"{base / r['ms_per_clip']:5.2f}x", flush=True)
                print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows, profiled


def profile(files: dict, contract, frames: np.ndarray, threads: int, batch: int, calls: int = 5) -> str:
    """Where ONNX Runtime's time goes, by operator type, for the fp32 and INT8 plugin forms
    (ORT's own profiler; per call, averaged over ``calls`` after 2 warm-up calls): what INT8 can
    speed up is the Conv/MatMul share, what it adds is the Q/DQ nodes."""
    import collections
    import json

    import onnxruntime as ort

    from m2s2l_deploy.runners.onnx_runner import session_options

    clips = np.stack([frames[i:i + contract.clip_len] for i in range(batch)])
    lines = [f"| op type | {' | '.join(f'{n}: ms / call (share)' for n in ('fp32', 'INT8'))} |", "|---|---|---|"]
    per_form = {}
    for name in ("ORT plugin + Numba op", "ORT INT8 Q/DQ (plugin + Numba op)"):
        so = session_options(threads, quiet=True, extensions=True)       # the runner's own settings
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
        sess = ort.InferenceSession(str(files[name]), so, providers=["CPUExecutionProvider"])
        with scan_op.calls_use_threads(threads):
            for _ in range(2 + calls):
                sess.run(None, {"clip": clips})
        events = json.loads(Path(sess.end_profiling()).read_text())
        runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
        after_warmup = runs[2]                           # node events of the last ``calls`` runs only
        totals = collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= after_warmup:
                totals[e["args"]["op_name"]] += e["dur"]
        per_form[name] = {op: us / calls / 1000 for op, us in totals.items()}
    fp32, int8 = per_form.values()
    ops = sorted(set(fp32) | set(int8), key=lambda op: -max(fp32.get(op, 0), int8.get(op, 0)))[:12]
    tot = [sum(d.values()) for d in (fp32, int8)]
    for op in ops:
        cells = [f"{d.get(op, 0):.2f} ({100 * d.get(op, 0) / t:.0f}%)" for d, t in zip((fp32, int8), tot)]
        lines.append(f"| {op} | {' | '.join(cells)} |")
    lines.append(f"| all operators | {tot[0]:.2f} | {tot[1]:.2f} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = ["| preset | threads | batch | form | ms / clip (median) | p10–p90 | PyTorch (Numba scan) in the same pair, "
             "ms / clip | speed-up over it | warm-up + timed batches |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['threads']} | {r['batch']} | {r['form']} | {r['ms_per_clip']:.2f} | "
                     f"{r['p10']:.2f}–{r['p90']:.2f} | {r['base_ms']:.2f} | {r['vs_baseline']:.2f}x | "
                     f"{r['warmup']} + {r['n_batches']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    p.add_argument("--threads", nargs="+", type=int, default=[2, 1],
                   help="thread counts (torch, ORT intra-op and the Numba scan alike); the first gets every form "
                        "and is the only one for paper")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--timing-batches", type=int, default=20, help="tiny: timed batches per row")
    p.add_argument("--paper-batches", type=int, default=4, help="paper: timed batches at batch 1 (half at larger batches)")
    p.add_argument("--warmup", type=int, default=3, help="tiny: untimed calls per runner (paper: 1)")
    p.add_argument("--video", type=Path, default=VTEST, help="real footage the clips come from")
    p.add_argument("--frames", type=int, default=400, help="frames of the video to use")
    p.add_argument("--checkpoint", help="tiny run folder to use instead of random weights")
    p.add_argument("--write", type=Path, help="Markdown file whose section is replaced")
    a = p.parse_args(argv)
    if not a.video.is_file():
        sys.exit(f"video {a.video} not found (give --video)")
    desc = machine("torch", "onnxruntime", "numba")
    print(desc, flush=True)
    t0 = time.perf_counter()
    scan_op.register()
    rows, profiled = run(a)
    tab = table(rows)
    print(tab)
    if profiled:
        print(profiled)
    first = scan_op.first_call_s()
    settings = sorted({r["settings"] for r in rows if r["preset"] == "tiny" and r["threads"] == a.threads[0]})[:2]
    body = (f"Measured by `python {' '.join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])}` on "
            f"{time.strftime('%Y-%m-%d')}; total {time.perf_counter() - t0:.0f} s.\n\nMachine: {desc}\n\n"
            f"How: clips of `{a.video.name}` (first {a.frames} frames, prepared under each model's contract), "
            "each form timed in a pair with the baseline, the two alone in the process, as `validate` times a "
            "candidate (`runners/timing.py`): the same batches of consecutive clips in stream order (split "
            "streaming reuses the frames it has encoded, as on a live stream), interleaved batch by batch after "
            "untimed warm-up calls, each timed call right after an untimed one of the same runner; median ms "
            "per clip over the timed batches. "
            "The thread count of a row is PyTorch's (`torch.set_num_threads`), ONNX Runtime's "
            "(`intra_op_num_threads`) and the Numba scan's alike. Random weights for `paper`"
            f"{'' if a.checkpoint else ' and `tiny`'}; INT8 calibrated on the video's first clips. "
            f"First launch of the Numba scan op in this process (compile or on-disk cache load): "
            f"{'n/a' if first is None else f'{first:.2f} s'}. Settings as `validate` prints them: "
            + "; ".join(settings) + ".\n\n"
            + tab + "\n\nForms:\n\n" + "\n".join(f"- {k}: {v}" for k, v in FORMS.items()) + "\n")
    if profiled:
        body += (f"\nWhere ONNX Runtime's time goes, `tiny`, batch {max(a.batches)}, {a.threads[0]} thread(s) (ORT's "
                 "profiler, node kernel time per call, the 12 largest operator types of either form; "
                 "`SelectiveScan` is the Numba op including its Python bridge):\n\n" + profiled + "\n")
    if a.write:
        write_section(a.write, SECTION, f"{SECTION}\n\n{body.strip()}")


if __name__ == "__main__":
    main()
