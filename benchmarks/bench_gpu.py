"""GPU benchmark of the Triton selective-scan kernel and the CUDA model path.

Made for ONE call of the device tool (scripts/device_check.sh runs each step with its own
timeout); every step writes a JSON and prints its table, so a failed step loses only its own rows.

  parity  the kernel vs ``selective_scan_ref`` on the GPU: random shapes (odd lengths,
          non-power-of-two channels, N 8/16, fp32/fp16/bf16, z/D/bias/softplus, grouped B/C) and
          the floor shape below. fp32 must agree to 1e-4 relative.
  floor   batch 32, channels 384, state 16, length 4096, fp32: achieved GB/s counting u, delta,
          B, C read once and y written once, and the fraction of the floor (those bytes at the
          device-to-device copy bandwidth measured in the same run, and at 3.0 TB/s). The default
          launch configuration and a few fixed alternatives (measured, not autotuned).
  table   `tiny`: PyTorch with the parallel scan (the CUDA path before the kernel) vs Triton, batch
          1; `paper`: Triton and Triton + CUDA graphs at batch 1 and 32, fp32 and fp16 (FPS, ms per
          call, ms per clip). Random weights (speed does not depend on them).
  compile rows of the table again with TorchRunner(compile=True) (torch.compile): compilation
          time, difference from eager, speed.
  profile `paper` fp16 batch 32 under torch.profiler: the GPU kernels that take the time (self CUDA
          time, share of the total), so a missed FPS goal says where the time went.
  report  merge the step JSONs of a folder, print the tables (Markdown, ready for
          docs/benchmarks.md) and the issue's goals, write bench_gpu.json.

    PYTHONPATH=. python benchmarks/bench_gpu.py --step parity|floor|table --json OUT.json
    PYTHONPATH=. python benchmarks/bench_gpu.py --report DIR

Without a CUDA device it stops at once (exit 2). ``--smoke`` runs the same code on the CPU with
tiny sizes through Triton's interpreter (needs TRITON_INTERPRET=1): it checks the script, its
numbers are not measurements.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from m2s2l_deploy.ops import scan
from m2s2l_deploy.contract import InputContract
from m2s2l_deploy.model import preset_config
from m2s2l_deploy.files import atomic_write_json
from m2s2l_deploy.model.checkpoint import Checkpoint
from m2s2l_deploy.runners import TorchRunner
from m2s2l_deploy.ops.scan import selective_scan_ref

NOMINAL_COPY_TBS = 3.0          # what a device-to-device copy moved on the lent H100 (docs/gpu.md)
FLOOR_SHAPE = (32, 384, 16, 4096)
SMOKE_FLOOR_SHAPE = (2, 8, 16, 64)


def device_info(smoke: bool) -> dict:
    import triton
    info = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "smoke": smoke}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(card=p.name, sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    else:
        info.update(card="CPU (Triton interpreter smoke run: not a measurement)")
    info["auto_scan_form_on_cuda"] = scan.choose_scan_form(True, False, scan._mamba_ssm_kernel() is not None,
                                                           scan._triton_kernel() is not None)
    return info


def timed(fn, warmup: int, iters: int, cuda: bool) -> dict:
    """Median and minimum milliseconds per call; CUDA events on the GPU, wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    ms = []
    if cuda:
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        ms = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(ms), "ms_min": min(ms), "warmup": warmup, "iters": iters}


def scan_inputs(batch, dim, state, length, groups=None, dtype=torch.float32, device="cuda", seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    bc = (batch, state, length) if groups is None else (batch, groups, state, length)
    x = dict(u=r(batch, dim, length).to(dtype), delta=(0.5 * r(batch, dim, length)).to(dtype),
             A=-torch.exp(r(dim, state)), B=r(*bc).to(dtype), C=r(*bc).to(dtype), D=r(dim),
             z=r(batch, dim, length).to(dtype), delta_bias=0.1 * r(dim))
    return {k: v.to(device) for k, v in x.items()}


# -- parity --------------------------------------------------------------------------------------

PARITY_CASES = [  # (batch, dim, state, length, groups, dtype, with z)
    (2, 6, 8, 7, None, torch.float32, True),
    (1, 12, 16, 33, 3, torch.float32, False),
    (3, 200, 16, 1000, 4, torch.float32, True),
    (2, 5, 16, 19, None, torch.float16, True),
    (4, 96, 16, 257, 4, torch.float16, False),
    (1, 8, 8, 10, 2, torch.bfloat16, True),
    (2, 3, 16, 5, None, torch.bfloat16, True),
    (4096, 192, 16, 5, None, torch.float32, False),      # the temporal scans: huge batch, 5 steps
]


def step_parity(args) -> dict:
    from m2s2l_deploy.ops.kernels.scan_triton import selective_scan_triton
    device = "cpu" if args.smoke else "cuda"
    cases = [c for c in PARITY_CASES if c[0] * c[1] * c[3] <= 200_000] if args.smoke else list(PARITY_CASES)
    cases.append((*(SMOKE_FLOOR_SHAPE if args.smoke else FLOOR_SHAPE), None, torch.float32, False))
    rows = []
    for batch, dim, state, length, groups, dtype, with_z in cases:
        row = dict(shape=f"{batch}x{dim}x{state}x{length}", groups=groups or 1, dtype=str(dtype)[6:], z=with_z)
        try:
            x = scan_inputs(batch, dim, state, length, groups, dtype, device)
            kw = dict(u=x["u"], delta=x["delta"], A=x["A"], B=x["B"], C=x["C"], D=x["D"],
                      z=x["z"] if with_z else None, delta_bias=x["delta_bias"], delta_softplus=True)
            y = selective_scan_triton(**kw).float()
            ref = selective_scan_ref(**kw).float()
            scale = ref.abs().max().item() or 1.0
            err = (y - ref).abs().max().item() / scale
            tol = 1e-4 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
            elementwise = bool(torch.allclose(y, ref, rtol=tol, atol=(1e-5 if dtype == torch.float32 else tol) * scale))
            row.update(max_rel_err=err, tolerance=tol, ok=bool(err <= tol and elementwise))
            del x, y, ref
        except Exception as exc:  # a failed case is a row, not the end of the step
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
            traceback.print_exc()
        rows.append(row)
        print(f"  parity {row}", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows, "ok": all(r["ok"] for r in rows)}


# -- memory floor --------------------------------------------------------------------------------

def floor_configs(state, length, dtype):
    from m2s2l_deploy.ops.kernels.scan_triton import launch_config
    return [
        ("default", launch_config(state, length, dtype)),
        ("tile 4, 8 stages", launch_config(state, length, dtype, block_t=4, stages=8)),
        ("4 channels/program (2 states/thread)", launch_config(state, length, dtype, block_d=4)),
        ("2 warps, 16 channels", launch_config(state, length, dtype, num_warps=2)),
        ("2 stages (shallow pipeline)", launch_config(state, length, dtype, stages=2)),
    ]


def step_floor(args) -> dict:
    from m2s2l_deploy.ops.kernels import scan_triton
    cuda = not args.smoke
    device = "cuda" if cuda else "cpu"
    batch, dim, state, length = SMOKE_FLOOR_SHAPE if args.smoke else FLOOR_SHAPE
    x = scan_inputs(batch, dim, state, length, None, torch.float32, device)
    nbytes = 4 * (2 * batch * dim * length + 2 * batch * state * length + batch * dim * length)
    result = {"shape": dict(batch=batch, channels=dim, state=state, length=length, dtype="fp32"),
              "bytes": nbytes, "rows": []}

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    copy = timed(lambda: dst.copy_(src), 3, 20 if cuda else 3, cuda)
    copy_bw = 2 * nbytes / (copy["ms"] * 1e-3)                    # bytes read + written per second
    result["copy"] = {**copy, "GBps": copy_bw / 1e9}
    src = dst = None                                              # free the copy buffers
    floor_ms = nbytes / copy_bw * 1e3
    result["floor_ms_measured_copy"] = floor_ms
    result["floor_ms_nominal"] = nbytes / (NOMINAL_COPY_TBS * 1e12) * 1e3
    print(f"  floor: {nbytes / 1e9:.3f} GB moved once; copy {copy_bw / 1e9:.0f} GB/s -> floor {floor_ms:.3f} ms "
          f"({result['floor_ms_nominal']:.3f} ms at {NOMINAL_COPY_TBS} TB/s)", flush=True)

    out = torch.empty_like(x["u"])
    for name, cfg in floor_configs(state, length, torch.float32):
        row = {"config": name, **cfg.__dict__}
        try:
            grid, launch_args, meta, _ = scan_triton.kernel_arguments(
                x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"], True, out, cfg)
            kernel = scan_triton._selective_scan_fwd_kernel
            compiled = kernel[grid](*launch_args, **meta)
            for attr in ("n_regs", "n_spills"):
                if hasattr(compiled, attr):
                    row[attr] = getattr(compiled, attr)
            t = timed(lambda: kernel[grid](*launch_args, **meta), 3, 20 if cuda else 2, cuda)
            row.update(t, programs=grid[0], GBps=nbytes / (t["ms"] * 1e-3) / 1e9,
                       frac_floor=floor_ms / t["ms"], frac_nominal=result["floor_ms_nominal"] / t["ms"])
        except Exception as exc:
            row.update(error=f"{type(exc).__name__}: {exc}"[:300])
            traceback.print_exc()
        result["rows"].append(row)
        print(f"  floor {row}", flush=True)
    return result


def _save_partial(args, data: dict) -> None:
    """Write the rows measured so far, so a step stopped at its time limit keeps them."""
    if args.json is not None:          # args.info: set by main() before any step runs
        atomic_write_json(args.json, {"device": args.info, args.step: {**data, "partial": True}})


# -- model table ---------------------------------------------------------------------------------

def table_rows(smoke: bool):
    """(preset, batch, dtype, cuda graph, forced scan form or None = automatic, label)."""
    if smoke:        # the interpreter takes ~1.5 min per tiny clip on a 2-core CPU
        return [("tiny", 1, "fp32", False, "parallel", "torch (parallel scan)"),
                ("tiny", 1, "fp32", False, "triton", "triton")]
    rows = [("tiny", 1, "fp32", False, "parallel", "torch (parallel scan)"),
            ("tiny", 1, "fp32", False, None, "triton"),
            ("tiny", 1, "fp32", True, None, "triton + graph")]
    for dtype in ("fp32", "fp16"):
        for batch in (1, 32):
            rows += [("paper", batch, dtype, False, None, "triton"), ("paper", batch, dtype, True, None, "triton + graph")]
    return rows


def _random_model(preset: str, batch: int, dtype: str, graph: bool, device: str, compile: bool = False):
    """A TorchRunner with random weights (speed does not depend on them) and one clip batch on device."""
    torch.manual_seed(0)
    cfg = preset_config(preset)
    contract = InputContract(cfg.height, cfg.width, cfg.in_channels, clip_len=cfg.clip_len)
    runner = TorchRunner(Checkpoint(Path(f"random-{preset}"), cfg, contract), device=device, dtype=dtype,
                         cuda_graph=graph, compile=compile)
    x = torch.rand(batch, cfg.clip_len, cfg.in_channels, cfg.height, cfg.width, device=device) * 2 - 1
    return runner, x


def _measure_rows(args, step: str, rows: list[dict], measure) -> dict:
    """measure(row) fills each row; a failure becomes the row's error and the next row still runs."""
    done = []
    for row in rows:
        try:
            measure(row)
        except Exception as exc:
            row.update(error=f"{type(exc).__name__}: {exc}"[:300])
            traceback.print_exc()
        done.append(row)
        _save_partial(args, {"rows": done})
        print(f"  {step} {row}", flush=True)
        if not args.smoke:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return {"rows": done}


def _iters(batch: int, cuda: bool) -> tuple[int, int]:
    """(warm-ups, timed calls)."""
    return (3, 20 if batch == 1 else 10) if cuda else (0, 1)


def step_table(args) -> dict:
    cuda = not args.smoke
    device = "cuda" if cuda else "cpu"

    def measure(row):
        form = row.pop("form")
        runner, x = _random_model(row["preset"], row["batch"], row["dtype"], row["cuda_graph"], device)
        runner.model.use_scan_form(form)
        t = timed(lambda: runner.run_device(x), *_iters(row["batch"], cuda), cuda)
        row.update(t, fps=row["batch"] / (t["ms"] * 1e-3), ms_per_clip=t["ms"] / row["batch"])
        if cuda:
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    rows = [dict(preset=preset, batch=batch, dtype=dtype, cuda_graph=graph, engine=label, form=form)
            for preset, batch, dtype, graph, form, label in table_rows(args.smoke)]
    return _measure_rows(args, "table", rows, measure)


# -- torch.compile ---------------------------------------------------------------------------------

def compile_rows(smoke: bool):
    """(preset, batch, dtype, cuda graph, label): rows of the table again under torch.compile
    (Inductor fuses the norms, casts, copies and pointwise ops around the scans)."""
    if smoke:        # TorchRunner(compile=True) is CUDA-only: nothing to check on a CPU
        return []
    return [("tiny", 1, "fp32", True, "triton + compile + graph"),
            ("paper", 1, "fp16", True, "triton + compile + graph"),
            ("paper", 32, "fp16", False, "triton + compile"),
            ("paper", 32, "fp16", True, "triton + compile + graph")]


def step_compile(args) -> dict:
    """TorchRunner(compile=True): compilation time, agreement with eager, speed."""
    import torch._dynamo
    cuda = not args.smoke
    device = "cuda" if cuda else "cpu"

    def measure(row):
        torch._dynamo.reset()
        runner, x = _random_model(row["preset"], row["batch"], row["dtype"], row["cuda_graph"], device, compile=True)
        eager = runner.model.outputs
        started = time.perf_counter()
        first = runner.run_device(x)["frame_score"].float().clone()
        if cuda:
            torch.cuda.synchronize()
        row["first_call_s"] = round(time.perf_counter() - started, 1)
        with torch.inference_mode():
            ref = eager(x)["frame_score"].float()
        row["max_abs_diff_vs_eager"] = float((first - ref).abs().max())
        t = timed(lambda: runner.run_device(x), *_iters(row["batch"], cuda), cuda)
        row.update(t, fps=row["batch"] / (t["ms"] * 1e-3), ms_per_clip=t["ms"] / row["batch"])
        row["graphs_compiled"] = int(torch._dynamo.utils.counters["stats"].get("unique_graphs", 0))

    rows = [dict(preset=preset, batch=batch, dtype=dtype, cuda_graph=graph, engine=label)
            for preset, batch, dtype, graph, label in compile_rows(args.smoke)]
    return _measure_rows(args, "compile", rows, measure)


# -- profile -------------------------------------------------------------------------------------

def step_profile(args) -> dict:
    """Where a paper fp16 batch-32 call spends GPU time: the top kernels by self CUDA time."""
    from torch.profiler import ProfilerActivity, profile
    cuda = not args.smoke
    device = "cuda" if cuda else "cpu"
    preset, batch, dtype = ("tiny", 1, "fp32") if args.smoke else ("paper", 32, "fp16")
    runner, x = _random_model(preset, batch, dtype, False, device)
    calls = 3 if cuda else 1
    for _ in range(2 if cuda else 0):
        runner.run_device(x)
    if cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(calls):
            runner.run_device(x)
        if cuda:
            torch.cuda.synchronize()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    if cuda and kernels:   # kernels only: host-side operator rows would count the same time twice
        events = kernels
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    rows = [dict(kernel=e.key[:90], calls=e.count // calls, ms_per_call=getattr(e, attr) / 1e3 / calls,
                 share=getattr(e, attr) / total) for e in events[:14]]
    # The same time by operator and input shape: names the model line behind an anonymous kernel.
    ops = [e for e in prof.key_averages(group_by_input_shape=True)
           if e.key.startswith("aten::") and getattr(e, attr, 0) > 0 and getattr(e, "device_type", None) != torch.autograd.DeviceType.CUDA]
    ops.sort(key=lambda e: getattr(e, attr), reverse=True)
    op_rows = [dict(op=e.key, shapes=str(e.input_shapes)[:120], calls=e.count // calls,
                    ms_per_call=getattr(e, attr) / 1e3 / calls, share=getattr(e, attr) / total) for e in ops[:14]]
    for r in rows + op_rows:
        print(f"  profile {r}", flush=True)
    return {"preset": preset, "batch": batch, "dtype": dtype, "total_ms_per_call": total / 1e3 / calls, "ops": op_rows,
            "what": "GPU kernel time" if cuda and kernels else "CPU operator time (smoke: not a measurement)",
            "kernels": len(events), "rows": rows}


# -- report --------------------------------------------------------------------------------------

def _fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def render(results: dict) -> str:
    """Markdown tables of whatever steps produced results."""
    info = results.get("device", {})
    lines = [f"Card: **{info.get('card', '?')}** ({info.get('sms', '?')} SMs); Python {info.get('python', '?')}, "
             f"torch {info.get('torch', '?')}, Triton {info.get('triton', '?')}; automatic scan form on CUDA: "
             f"{info.get('auto_scan_form_on_cuda', '?')}."]
    if info.get("smoke"):
        lines.append("\n**Smoke run on CPU through Triton's interpreter: these numbers are not measurements.**")
    for step in ("parity", "floor", "table", "compile", "profile"):
        if step not in results:
            lines.append(f"\n{step}: no result (the step failed or timed out: see device_check.log).")
        elif results[step].get("partial"):
            lines.append(f"\n{step}: partial result (the step stopped before its last row: see device_check.log).")
    par = results.get("parity")
    if par:
        lines += ["", "Kernel parity on the device (max |y - ref| / max |ref|):", "",
                  "| shape (b x d x N x L) | groups | dtype | z | max rel. error | tolerance | ok |", "|---|---|---|---|---|---|---|"]
        for r in par["rows"]:
            lines.append(f"| {r['shape']} | {r['groups']} | {r['dtype']} | {r['z']} | {_fmt(r.get('max_rel_err'), '.2e')} | "
                         f"{_fmt(r.get('tolerance'), '.0e')} | {'yes' if r['ok'] else 'NO ' + r.get('error', '')} |")
    flo = results.get("floor")
    if flo and "shape" in flo:
        s = flo["shape"]
        lines += ["", f"Memory floor, selective scan b={s['batch']} d={s['channels']} N={s['state']} L={s['length']} fp32, "
                  f"softplus + bias + D, no z: {flo['bytes'] / 1e9:.3f} GB moved once; device copy "
                  f"{_fmt(flo.get('copy', {}).get('GBps'), '.0f')} GB/s -> floor {_fmt(flo.get('floor_ms_measured_copy'), '.3f')} ms "
                  f"({_fmt(flo.get('floor_ms_nominal'), '.3f')} ms at {NOMINAL_COPY_TBS} TB/s). Median of 20 launches after 3 warm-ups "
                  "(CUDA events).", "",
                  "| config | channels/program | time tile | warps | stages | registers | ms | GB/s | of floor (copy) | of floor (3.0 TB/s) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in flo["rows"]:
            if "error" in r:
                lines.append(f"| {r['config']} | {r['block_d']} | {r['block_t']} | {r['num_warps']} | {r['stages']} | - | "
                             f"failed: {r['error'][:80]} | | | |")
                continue
            lines.append(f"| {r['config']} | {r['block_d']} | {r['block_t']} | {r['num_warps']} | {r['stages']} | "
                         f"{r.get('n_regs', '-')} | {r['ms']:.3f} | {r['GBps']:.0f} | {100 * r['frac_floor']:.0f}% | "
                         f"{100 * r['frac_nominal']:.0f}% |")
    def model_rows(rows, cells, n_cells):
        """One Markdown row per model measurement: preset, batch, dtype, engine, then cells(row)."""
        for r in rows:
            head = f"| {r['preset']} | {r['batch']} | {r['dtype']} | {r['engine']} | "
            if "error" in r:
                lines.append(head + f"failed: {r['error'][:80]} |" + " |" * (n_cells - 1))
            else:
                lines.append(head + " | ".join(cells(r)) + " |")

    tab = results.get("table")
    if tab:
        lines += ["", "Model, PyTorch CUDA runner (`TorchRunner.run_device`, input already on the GPU, random weights; "
                  "median after 3 warm-ups, CUDA events; fp16 = autocast):", "",
                  "| preset | batch | dtype | engine | ms / call | ms / clip | FPS | peak GiB |", "|---|---|---|---|---|---|---|---|"]
        model_rows(tab["rows"], lambda r: [f"{r['ms']:.2f}", f"{r['ms_per_clip']:.3f}", f"{r['fps']:.0f}",
                                           f"{r.get('peak_mem_gib', '-')}"], 4)
    com = results.get("compile")
    if com and com["rows"]:
        lines += ["", "The same runner with `compile=True` (`torch.compile`, Inductor, `dynamic=False`). "
                  "First call = compilation + run:", "",
                  "| preset | batch | dtype | engine | first call s | max abs diff vs eager (score) | ms / call | ms / clip | FPS |",
                  "|---|---|---|---|---|---|---|---|---|"]
        model_rows(com["rows"], lambda r: [f"{r['first_call_s']}", f"{r['max_abs_diff_vs_eager']:.1e}", f"{r['ms']:.2f}",
                                           f"{r['ms_per_clip']:.3f}", f"{r['fps']:.0f}"], 5)
    pro = results.get("profile")
    if pro and pro.get("rows"):
        lines += ["", f"Where the time goes: {pro['preset']} {pro['dtype']} batch {pro['batch']}, torch.profiler, "
                  f"{pro['total_ms_per_call']:.2f} ms of {pro.get('what', 'GPU kernel time')} per call in {pro['kernels']} "
                  "distinct kernels; "
                  "the largest:", "", "| kernel | launches / call | ms / call | share |", "|---|---|---|---|"]
        for r in pro["rows"]:
            name = r["kernel"].replace("|", "/")
            lines.append(f"| `{name}` | {r['calls']} | {r['ms_per_call']:.3f} | {100 * r['share']:.1f}% |")
        if pro.get("ops"):
            lines += ["", "The same time by operator and input shapes (self time of the kernels each operator launched):", "",
                      "| operator | input shapes | calls / call | ms / call | share |", "|---|---|---|---|---|"]
            for r in pro["ops"]:
                lines.append(f"| `{r['op']}` | `{r['shapes']}` | {r['calls']} | {r['ms_per_call']:.3f} | {100 * r['share']:.1f}% |")
    lines += ["", "Goals of the GPU work (measured, not asserted):"]
    best_floor = max((r.get("frac_floor", 0) for r in (flo or {}).get("rows", [])), default=None)
    lines.append(f"- kernel >= 60% of the memory floor: best {_fmt(100 * best_floor if best_floor else None, '.0f')}%")
    for text, pick, key, goal, better in [
            ("paper fp16 batch 32 >= 2000 FPS", ("paper", 32, "fp16"), "fps", 2000, max),
            ("paper batch 1 <= 3 ms per clip", ("paper", 1, None), "ms_per_clip", 3.0, min)]:
        vals = [r[key] for r in (tab or {}).get("rows", []) + (com or {}).get("rows", []) if key in r and (r["preset"], r["batch"]) == pick[:2]
                and (pick[2] is None or r["dtype"] == pick[2])]
        best = better(vals) if vals else None
        met = best is not None and (best >= goal if better is max else best <= goal)
        lines.append(f"- {text}: best {_fmt(best, '.2f')} — {'met' if met else 'not met' if best is not None else 'not measured'}")
    return "\n".join(lines)


def report(folder: Path) -> dict:
    results = {}
    for name in ("parity", "floor", "table", "compile", "profile"):
        path = folder / f"{name}.json"
        if path.exists():
            data = json.loads(path.read_text())
            results.setdefault("device", data.get("device", {}))
            results[name] = data.get(name, {})
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", choices=["parity", "floor", "table", "compile", "profile"])
    ap.add_argument("--json", type=Path, help="where the step writes its JSON")
    ap.add_argument("--report", type=Path, metavar="DIR", help="merge DIR/{parity,floor,table,compile,profile}.json, print, write DIR/bench_gpu.json")
    ap.add_argument("--markdown", type=Path, help="with --report: also write the tables to this Markdown file")
    ap.add_argument("--smoke", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny sizes: checks the script, measures nothing")
    args = ap.parse_args(argv)

    if args.report:
        results = report(args.report)
        text = render(results)
        print(text)
        atomic_write_json(args.report / "bench_gpu.json", results)
        if args.markdown:
            args.markdown.write_text(text + "\n")
        return 0 if results else 1
    if not args.step:
        ap.error("give --step or --report")
    if not args.smoke and not torch.cuda.is_available():
        print("error: no CUDA device: bench_gpu.py measures the GPU path; run scripts/device_check.sh through the "
              "device tool (docs/gpu.md), or --smoke with TRITON_INTERPRET=1 to check the script on CPU", file=sys.stderr)
        return 2
    if args.smoke:
        from m2s2l_deploy.ops.kernels import scan_triton
        if not scan_triton.interpreted():
            print("error: --smoke needs TRITON_INTERPRET=1 in the environment", file=sys.stderr)
            return 2
    info = args.info = device_info(args.smoke)
    print(f"== {args.step} on {info['card']} (torch {info['torch']}, triton {info['triton']})", flush=True)
    started = time.perf_counter()
    data = {"parity": step_parity, "floor": step_floor, "table": step_table, "compile": step_compile,
            "profile": step_profile}[args.step](args)
    data["seconds"] = round(time.perf_counter() - started, 1)
    results = {"device": info, args.step: data}
    print(render(results))
    if args.json:
        atomic_write_json(args.json, results)
    return 0 if data.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
