"""``validate``: a deployed form (ONNX, engine) against the PyTorch model on one labelled test set.

Why several gates: on a saturated or easy test set ΔAUC stays near zero even for a model whose
scores are visibly wrong, so the exit code also needs the agreement of the scores themselves
(correlation) and of the raw outputs (error bound). Limits depend on the candidate's precision:

| precision | max abs ΔAUC | min correlation | frame-score error, p99 relative |
| --- | --- | --- | --- |
| fp32 | 0.005 | 0.999 | 1e-3 |
| fp16 | 0.005 | 0.99 | 0.02 |
| int8 | 0.01 | 0.97 | 0.25 |

- ΔAUC: the larger of |Δ| on micro AUC under the paper protocol (per-video min-max) and under the
  causal protocol (scores as emitted); macro AUCs are reported, not gated.
- correlation: the smaller of Pearson and Spearman (scipy) over every test frame's score.
- ΔAUC resolution (reported, with a warning, not gated): the 95th percentile of the gated |ΔAUC|
  when the candidate's per-frame score errors are shuffled across frames. At or above the ΔAUC
  limit the test set is too small to judge that gate (clean videos under per-video min-max).
- relative error of an output value: |candidate − torch| / max(|torch|, RMS(torch)), the RMS taken
  over that output on the whole test set: values smaller than the output's typical magnitude are
  measured against that magnitude (frame scores cross zero, where |torch| alone explodes); the gate
  reads its 99th percentile on ``frame_score`` (the decision); every output's max/mean absolute
  and p99 relative error is reported (maps subsampled to at most 4096 values per clip).

Both runners see the same prepared clips (one ``prepare_frames`` pass). Speed is not read from
the accuracy runs (each a few minutes long, one runner after the other, so load drift on a shared
machine would decide the ratio): a separate phase (``runners.timing``) times both runners on the
same batches, interleaved, after untimed warm-up calls, and reports the median per clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..contract import prepare_frames
from ..data import open_dataset
from ..errors import DataError, UserError
from ..files import atomic_write_bytes, atomic_write_json, output_path
from ..report import metrics
from ..runners.timing import describe_settings, time_runners, timing_settings
from ..runners.timing import timing_batches as make_timing_batches   # run_validate's parameter has its name
from .clip_loop import fill_head, scored_batches

PRECISIONS = ("fp32", "fp16", "int8")
GATE_LIMITS = {
    "fp32": {"delta_auc": 0.005, "correlation": 0.999, "output_error": 1e-3},
    "fp16": {"delta_auc": 0.005, "correlation": 0.99, "output_error": 0.02},
    "int8": {"delta_auc": 0.01, "correlation": 0.97, "output_error": 0.25},
}
MAX_SAMPLES_PER_CLIP = 4096  # map outputs are subsampled (every s-th value) to at most this per clip
GATED_OUTPUT = "frame_score"


@dataclass
class LabelledVideo:
    name: str
    prepared: np.ndarray        # (N, C, H, W) float32 under the reference's input contract
    labels: np.ndarray          # (N,) 0/1


@dataclass
class RunRecord:
    """What one runner produced on a test set: per-video frame scores and sampled outputs.

    No timing: speed is measured apart, on both runners interleaved (``runners.timing``).
    """

    runner: str
    frame_scores: dict[str, np.ndarray]            # causal scores, first T-1 frames filled
    samples: dict[str, np.ndarray]                 # output name -> sampled values (clips, k)
    n_clips: int
    data_key: tuple = ()


def load_test_set(data, dataset: str, contract, max_videos: int | None = None,
                  log: Callable[[str], None] = print) -> list[LabelledVideo]:
    """Labelled test videos prepared once under ``contract`` (both runners then see the same input)."""
    ds = open_dataset(data, dataset)
    videos = [v for v in ds.test if v.labels is not None]
    if not videos:
        raise UserError(f"{data} ({ds.layout} layout) has no labelled test videos to validate on")
    if max_videos is not None:
        if max_videos < 1:
            raise UserError(f"--max-videos must be >= 1, got {max_videos}")
        videos = videos[:max_videos]
    if ds.fps and contract.fps and abs(ds.fps - contract.fps) > 0.01:
        log(f"warning: test footage is {ds.fps:g} fps but the model was trained at {contract.fps:g} fps")
    out = []
    for v in videos:
        prepared = prepare_frames(v.load(), contract)
        if len(prepared) < contract.clip_len:
            raise DataError(f"test video {v.name} has {len(prepared)} frames, fewer than one clip of {contract.clip_len}")
        out.append(LabelledVideo(v.name, prepared, np.asarray(v.labels)))
    labels = np.concatenate([v.labels for v in out])
    if labels.min() == labels.max():
        raise UserError(f"the labelled test videos of {data} hold only {'anomalous' if labels.max() else 'normal'} "
                        "frames: AUC needs both classes")
    return out


def _data_key(videos: list[LabelledVideo]) -> tuple:
    return tuple((v.name, v.prepared.shape) for v in videos)


def _sample(values: np.ndarray) -> np.ndarray:
    flat = np.asarray(values, dtype=np.float32).reshape(len(values), -1)
    stride = max(1, math.ceil(flat.shape[1] / MAX_SAMPLES_PER_CLIP))
    return flat[:, ::stride].copy()


def record_run(runner, videos: list[LabelledVideo], batch: int = 16,
               progress: Callable[[int], None] | None = None) -> RunRecord:
    """Run ``runner`` over every clip of ``videos``; keep scores and sampled outputs (for accuracy)."""
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    T = runner.contract.clip_len
    scores: dict[str, np.ndarray] = {}
    samples: dict[str, list[np.ndarray]] = {}
    n_clips = 0
    for v in videos:
        runner.reset_stream()
        per_video = []
        for b in scored_batches(runner, v.prepared, batch):
            n_clips += len(b.targets)
            per_video.append(b.scores)
            for name, value in b.outputs.items():
                samples.setdefault(name, []).append(_sample(value))
            if progress is not None:
                progress(len(b.targets))
        scores[v.name] = fill_head(np.concatenate(per_video), T - 1)
    return RunRecord(runner=runner.name, frame_scores=scores,
                     samples={k: np.concatenate(v) for k, v in samples.items()}, n_clips=n_clips,
                     data_key=_data_key(videos))


def error_stats(ref: np.ndarray, cand: np.ndarray) -> dict:
    """max/mean absolute and p99 relative error of ``cand`` against ``ref`` (see module docstring)."""
    r = np.asarray(ref, np.float64).reshape(-1)
    c = np.asarray(cand, np.float64).reshape(-1)
    if r.shape != c.shape:
        raise DataError(f"output shapes differ: reference {r.shape}, candidate {c.shape}")
    if not np.all(np.isfinite(c)):
        return {"max_abs": math.inf, "mean_abs": math.inf, "p99_rel": math.inf, "finite": False}
    err = np.abs(c - r)
    rms = float(np.sqrt(np.mean(r * r))) if r.size else 0.0
    denom = np.maximum(np.abs(r), max(rms, 1e-30))
    rel = err / denom
    return {"max_abs": float(err.max()), "mean_abs": float(err.mean()),
            "p99_rel": float(np.percentile(rel, 99)), "finite": True}


def _aucs(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict:
    """Both protocols' AUCs; None everywhere when a score is NaN/inf (the candidate then fails)."""
    if not all(np.all(np.isfinite(s)) for s in scores.values()):
        return dict.fromkeys(("auc_micro", "auc_macro", "auc_micro_causal", "auc_macro_causal"))
    paper = metrics.frame_auc({v: metrics.minmax_per_video(s) for v, s in scores.items()}, labels)
    causal = metrics.frame_auc(scores, labels)
    return {"auc_micro": paper["auc_micro"], "auc_macro": paper["auc_macro"],
            "auc_micro_causal": causal["auc_micro"], "auc_macro_causal": causal["auc_macro"]}


def delta_auc_resolution(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                         draws: int = 200, seed: int = 0) -> float | None:
    """How far the gated ΔAUC moves when the candidate's own score errors land on random frames.

    The candidate's per-frame differences from the reference are shuffled across the test set and
    added back to the reference scores; the 95th percentile of the resulting gated |ΔAUC| (paper
    and causal micro) is returned. When it reaches the gate's limit, the test set cannot tell a
    systematic degradation from errors of this size falling on unlucky frames: under the paper
    protocol a clean video's noise is stretched to [0, 1], so a few small errors can move the micro
    AUC by 0.01 on a few hundred frames (an INT8 test set of 3 videos once failed CI that way).
    """
    from sklearn.metrics import roc_auc_score

    names = list(labels)
    r = [np.asarray(ref[n], dtype=np.float64) for n in names]
    diffs = np.concatenate([np.asarray(cand[n], dtype=np.float64) - r_n for n, r_n in zip(names, r)])
    if not np.all(np.isfinite(diffs)):
        return None
    y = np.concatenate([labels[n] for n in names]).astype(np.int64)
    if y.min() == y.max():
        return None
    cuts = np.cumsum([len(x) for x in r])[:-1]

    def micro(per_video):
        paper = roc_auc_score(y, np.concatenate([metrics.minmax_per_video(x) for x in per_video]))
        return paper, roc_auc_score(y, np.concatenate(per_video))

    base = micro(r)
    flat = np.concatenate(r)
    rng = np.random.default_rng(seed)
    moved = []
    for _ in range(draws):
        shifted = np.split(flat + rng.permutation(diffs), cuts)
        moved.append(max(abs(a - b) for a, b in zip(micro(shifted), base)))
    return float(np.quantile(moved, 0.95))


def _correlations(a: np.ndarray, b: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr

    if not np.all(np.isfinite(b)) or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"pearson": None, "spearman": None}
    return {"pearson": float(pearsonr(a, b)[0]), "spearman": float(spearmanr(a, b)[0])}


def _gate(name: str, value, limit: float, higher_is_better: bool, what: str) -> dict:
    ok = value is not None and math.isfinite(value) and (value >= limit if higher_is_better else value <= limit)
    return {"name": name, "what": what, "value": value, "limit": limit,
            "comparison": ">=" if higher_is_better else "<=", "passed": bool(ok)}


def _speed(timing: dict | None, role: str) -> dict:
    """One runner's speed fields of the report, from the timing phase (None when it was skipped)."""
    r = timing["results"][role] if timing else None
    return {"ms_per_clip": round(r["ms_per_clip"], 3) if r else None,
            "ms_per_call_p50": round(r["ms_per_call"], 3) if r else None}


def _speedup(timing: dict | None) -> float | None:
    if not timing:
        return None
    ref, cand = (timing["results"][role]["ms_per_clip"] for role in ("reference", "candidate"))
    return round(ref / cand, 3) if cand > 0 else None


def compare(reference: RunRecord, candidate: RunRecord, videos: list[LabelledVideo], precision: str,
            auc_tol: float | None = None, timing: dict | None = None) -> dict:
    """The validation report (no I/O): AUCs, errors, correlations, latency, gates.

    ``timing`` is ``{"settings": timing_settings(...), "results": time_runners(...)}`` with the
    runners named ``reference`` and ``candidate``; without it the speed fields are None.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    if reference.data_key != candidate.data_key or reference.data_key != _data_key(videos):
        raise ValueError("reference and candidate were run on different test sets")
    labels = {v.name: v.labels for v in videos}
    auc_ref, auc_cand = _aucs(reference.frame_scores, labels), _aucs(candidate.frame_scores, labels)
    delta = {k: (None if auc_ref[k] is None or auc_cand[k] is None else auc_cand[k] - auc_ref[k]) for k in auc_ref}
    names = [v.name for v in videos]
    s_ref = np.concatenate([reference.frame_scores[n] for n in names])
    s_cand = np.concatenate([candidate.frame_scores[n] for n in names])
    corr = _correlations(s_ref, s_cand)
    errors = {k: error_stats(reference.samples[k], candidate.samples[k])
              for k in reference.samples if k in candidate.samples}
    if GATED_OUTPUT not in errors:
        raise UserError(f"the candidate does not return '{GATED_OUTPUT}'")

    limits = dict(GATE_LIMITS[precision])
    if auc_tol is not None:
        if not (auc_tol >= 0 and math.isfinite(auc_tol)):
            raise UserError(f"--auc-tol must be a non-negative number, got {auc_tol}")
        limits["delta_auc"] = float(auc_tol)
    gated = [delta[k] for k in ("auc_micro", "auc_micro_causal")]
    d_auc = None if None in gated else max(abs(d) for d in gated)
    c_min = None if corr["pearson"] is None else min(corr["pearson"], corr["spearman"])
    gates = [
        _gate("delta_auc", d_auc, limits["delta_auc"], False, "largest abs ΔAUC (micro, paper and causal protocols)"),
        _gate("correlation", c_min, limits["correlation"], True, "min(Pearson, Spearman) of frame scores"),
        _gate("output_error", errors[GATED_OUTPUT]["p99_rel"], limits["output_error"], False,
              f"{GATED_OUTPUT} error, 99th-percentile relative"),
    ]
    resolution = delta_auc_resolution(reference.frame_scores, candidate.frame_scores, labels)
    warnings = []
    if resolution is not None and resolution >= limits["delta_auc"]:
        warnings.append(f"this test set cannot resolve the ΔAUC gate for errors of this size: the candidate's own "
                        f"score errors placed on random frames move ΔAUC by up to {resolution:.4f} (95th percentile) "
                        f">= the limit {limits['delta_auc']:g}; validate on more videos (more frames per clean video)")
    return {
        "passed": all(g["passed"] for g in gates),
        "failed_gates": [g["name"] for g in gates if not g["passed"]],
        "precision": precision,
        "reference": {"runner": reference.runner, **auc_ref, **_speed(timing, "reference")},
        "candidate": {"runner": candidate.runner, **auc_cand, **_speed(timing, "candidate")},
        "delta_auc": delta,
        "correlation": corr,
        "output_error": errors,
        "speedup": _speedup(timing),
        "timing": timing,
        "gates": gates,
        "delta_auc_resolution": resolution,
        "warnings": warnings,
        "n_videos": len(videos),
        "n_frames": int(sum(len(v.labels) for v in videos)),
        "n_clips": candidate.n_clips,
        "definitions": {
            "relative_error": "|cand - ref| / max(|ref|, RMS of ref over the test set)",
            "maps": f"subsampled to at most {MAX_SAMPLES_PER_CLIP} values per clip",
            "latency": "ms per clip = median over the timed batches of (time inside runner.infer / clips); "
                       "both runners on the same batches, interleaved, after untimed warm-up calls, each timed "
                       "call right after an untimed one of the same runner (runners/timing.py)",
            "first_frames": "the first T-1 frames of each video take the first decidable score",
            "delta_auc_resolution": "95th percentile of the gated |ΔAUC| when the candidate's per-frame score "
                                    "differences are shuffled across frames (200 draws)",
        },
    }


# -- report --------------------------------------------------------------------------------------
def _f(x, digits=4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and not math.isfinite(x):
        return "inf"
    return f"{x:.{digits}f}"


def _e(x) -> str:
    if x is None:
        return "n/a"
    return "inf" if not math.isfinite(x) else f"{x:.2e}"


def markdown_report(report: dict) -> str:
    """One table a user can paste into an issue, then the gates and the per-output errors."""
    ref, cand = report["reference"], report["candidate"]
    verdict = "PASS" if report["passed"] else "FAIL (" + ", ".join(report["failed_gates"]) + ")"
    m = report.get("machine", {})
    lines = [f"### validate: `{cand['runner']}` ({report['precision']}) vs PyTorch `{ref['runner']}`: {verdict}", ""]
    ds = report.get("dataset", {})
    if ds:
        lines.append(f"Data: `{ds.get('root')}` ({ds.get('layout')} layout), {report['n_videos']} labelled videos, "
                     f"{report['n_frames']} frames, batch {report.get('batch', '?')}.")
    if m:
        lines.append(f"Machine: {m.get('cpu', '?')}, {m.get('cpu_count', '?')} cores"
                     + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
                     + f"; torch {m.get('torch', '?')}, onnxruntime {m.get('onnxruntime', '?')}.")
    lines += ["", "| | PyTorch | candidate | difference |", "| --- | --- | --- | --- |"]
    for key, label in (("auc_micro", "frame AUC micro (paper protocol)"), ("auc_macro", "frame AUC macro (paper protocol)"),
                       ("auc_micro_causal", "frame AUC micro (causal protocol)"),
                       ("auc_macro_causal", "frame AUC macro (causal protocol)")):
        d = report["delta_auc"][key]
        lines.append(f"| {label} | {_f(ref[key])} | {_f(cand[key])} | {'n/a' if d is None else f'{d:+.4f}'} |")
    timing, sp = report.get("timing"), report.get("speedup")
    if timing:
        lines += [f"| ms per clip | {_f(ref['ms_per_clip'], 2)} | {_f(cand['ms_per_clip'], 2)} | "
                  f"{'n/a' if sp is None else f'{sp:.2f}x speed-up'} |",
                  "", f"Speed: {describe_settings(timing['settings'])}."]
    else:
        lines += ["| ms per clip | not timed | not timed | |", "", "Speed: not timed (--timing-batches 0)."]
    lines += ["", "| gate | value | limit | result |", "| --- | --- | --- | --- |"]
    for g in report["gates"]:
        v = g["value"]
        shown = _e(v) if g["name"] == "output_error" else _f(v, 6 if g["name"] == "correlation" else 4)
        lines.append(f"| {g['what']} | {shown} | {g['comparison']} {g['limit']:g} | {'pass' if g['passed'] else '**FAIL**'} |")
    res = report.get("delta_auc_resolution")
    if res is not None:
        lines += ["", f"ΔAUC resolution of this test set for the candidate's error level: {res:.4f} "
                  "(95th percentile of |ΔAUC| with its score errors shuffled across frames)."]
    for w in report.get("warnings", []):
        lines += ["", f"**Warning:** {w}."]
    c = report["correlation"]
    lines += ["", f"Pearson {_f(c['pearson'], 6)}, Spearman {_f(c['spearman'], 6)}.", "",
              "| output | max abs error | mean abs error | p99 relative error |", "| --- | --- | --- | --- |"]
    for name, e in report["output_error"].items():
        lines.append(f"| `{name}` | {_e(e['max_abs'])} | {_e(e['mean_abs'])} | {_e(e['p99_rel'])} |")
    lines += ["", f"Relative error: {report['definitions']['relative_error']}; "
              f"{report['definitions']['latency']}.", ""]
    return "\n".join(lines)


def time_pair(ref_runner, cand, batches: list, batch: int, warmup: int, log: Callable[[str], None] = print) -> dict:
    """The report's ``timing``: both runners on the same ``batches`` (from ``timing_batches``), interleaved."""
    runners = {"reference": ref_runner, "candidate": cand}
    log(f"timing: {len(batches)} batches of {batch} clips, both runners interleaved, after {warmup} warm-up calls")
    results = time_runners(runners, batches, warmup)
    return {"settings": timing_settings(runners, batch, warmup, len(batches)), "results": results}


def run_validate(checkpoint, *, onnx=None, engine=None, data, dataset: str = "auto", precision: str | None = None,
                 auc_tol: float | None = None, batch: int = 16, max_videos: int | None = None, device: str = "cpu",
                 threads: int | None = None, json_out=None, markdown_out=None, reference: RunRecord | None = None,
                 reference_runner=None, test_set: list[LabelledVideo] | None = None, candidate_runner=None,
                 timing_batches: int = 20, warmup: int = 3,
                 progress_factory: Callable[[str, int], Callable[[int], None]] | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Validate ``onnx`` or ``engine`` against the PyTorch ``checkpoint`` on the labelled test set ``data``.

    Returns the report (``report["passed"]`` is the verdict); writes JSON / Markdown when asked,
    also when a gate fails. ``reference`` (a ``RunRecord``) with the ``reference_runner`` that
    recorded it, ``test_set`` and ``candidate_runner`` let a caller reuse work across several
    candidates (tests, demo); the runner is still needed because every report times its own pair.
    Speed: ``timing_batches`` batches of ``batch`` clips after ``warmup`` untimed calls per
    runner (0 batches: not timed, speed fields None).
    """
    from ..runners.factory import describe_machine, make_runner

    if checkpoint is None:
        raise UserError("validate needs --checkpoint RUN (the PyTorch reference)")
    if candidate_runner is None and onnx is None and engine is None:
        raise UserError("validate needs a candidate: --onnx FILE or --engine PLAN")
    if reference is not None and reference_runner is None:
        raise ValueError("run_validate(reference=...) needs the reference_runner that recorded it (for timing)")
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    if timing_batches < 0:
        raise UserError(f"--timing-batches must be >= 0 (0 skips timing), got {timing_batches}")
    if warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {warmup}")
    json_out = output_path(json_out, "JSON output", (".json",))
    markdown_out = output_path(markdown_out, "Markdown output", (".md",))
    if auc_tol is not None and not (math.isfinite(auc_tol) and auc_tol >= 0):
        raise UserError(f"--auc-tol must be a non-negative number, got {auc_tol}")
    if precision is not None:
        precision = precision.strip().lower()
        if precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")

    ref_runner = (reference_runner if reference_runner is not None
                  else make_runner(checkpoint=checkpoint, device=device, threads=threads))
    cand = candidate_runner or make_runner(checkpoint=checkpoint, onnx=onnx, engine=engine, device=device,
                                           threads=threads)
    contract = ref_runner.contract
    if cand.contract != ref_runner.contract:
        raise UserError(f"the candidate's input contract {cand.contract.to_dict()} differs from the checkpoint's "
                        f"{ref_runner.contract.to_dict()}: it was built for another model")
    if precision is None:
        precision, precision_source = cand.precision, cand.precision_source
        if precision is None:
            raise UserError("cannot tell the candidate's precision: pass --precision fp32|fp16|int8")
        if precision not in PRECISIONS:
            raise UserError(f"the candidate says its precision is '{precision}'; pass --precision fp32|fp16|int8")
    else:
        precision_source = "--precision"
    videos = test_set if test_set is not None else load_test_set(data, dataset, contract, max_videos, log=log)
    n_clips = sum(len(v.prepared) - contract.clip_len + 1 for v in videos)
    # picked before the accuracy runs, so a test set too short for one timing batch fails in seconds
    batches = make_timing_batches([v.prepared for v in videos], contract.clip_len, batch,
                                  timing_batches) if timing_batches else None

    def prog(label):
        return progress_factory(label, n_clips) if progress_factory else None
    if reference is None:
        log(f"reference: {ref_runner.name} on {len(videos)} videos ({n_clips} clips)")
        reference = record_run(ref_runner, videos, batch, prog("PyTorch"))
    log(f"candidate: {cand.name} ({precision}, from {precision_source})")
    candidate = record_run(cand, videos, batch, prog(cand.name))
    timing = time_pair(ref_runner, cand, batches, batch, warmup, log) if batches else None
    report = compare(reference, candidate, videos, precision, auc_tol, timing)
    report["precision_source"] = precision_source
    report["batch"] = batch
    report["checkpoint"] = str(checkpoint)
    report["candidate"]["file"] = str(onnx or engine or cand.name)
    if data is not None:
        from ..data import detect_layout
        layout = detect_layout(data) if dataset == "auto" else dataset
        report["dataset"] = {"root": str(Path(data).resolve()), "layout": layout}
    report["machine"] = describe_machine(cand)
    markdown = markdown_report(report)
    written = []
    try:
        if markdown_out is not None:
            atomic_write_bytes(markdown_out, lambda tmp: Path(tmp).write_text(markdown))
            written.append(markdown_out)
        if json_out is not None:
            atomic_write_json(json_out, report)
            written.append(json_out)
    except OSError as e:
        for p in written:
            Path(p).unlink(missing_ok=True)
        raise UserError(f"cannot write the validation report: {e.strerror or e}") from None
    report["markdown"] = markdown
    return report
