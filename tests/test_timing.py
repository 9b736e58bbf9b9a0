"""runners.timing: which batches are timed, in what order, with which resets, and the arithmetic
of the medians, on fake runners that sleep a known time (no model, no training)."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from m2s2l_deploy.contract import InputContract
from m2s2l_deploy.errors import UserError
from m2s2l_deploy.runners.base import Runner
from m2s2l_deploy.runners.timing import describe_settings, time_runners, timing_batches, timing_settings

T, C, H, W = 3, 1, 2, 2


def video(n: int, first: int) -> np.ndarray:
    """n frames whose pixels all hold their global frame number (first, first+1, ...): clips tell where they came from."""
    return np.broadcast_to(np.arange(first, first + n, dtype=np.float32)[:, None, None, None], (n, C, H, W)).copy()


class SleepyRunner(Runner):
    """Sleeps ``ms`` per call; logs ("infer", name, first frame of the batch) and ("reset", name) into ``log``."""

    def __init__(self, name: str, ms: float, log: list, extra: dict | None = None):
        self.name, self.ms, self.log, self.extra = name, ms, log, extra or {}
        self.contract = InputContract(H, W, C, clip_len=T)

    def _infer(self, clips):
        self.log.append(("infer", self.name, int(clips[0, 0, 0, 0, 0])))
        time.sleep(self.ms / 1000)
        return {"frame_score": np.zeros(len(clips), np.float32)}

    def reset_stream(self):
        self.log.append(("reset", self.name))

    def describe(self):
        return {"runner": self.name, **self.extra}


def test_batches_are_distinct_consecutive_clips_within_one_video():
    videos = [video(12, 0), video(4, 100), video(9, 200)]        # 10, 2 and 7 clips of T=3
    batches = timing_batches(videos, T, batch=3, n_batches=20)
    # full batches only, stream order, never across videos: video 0 gives 3, video 1 none, video 2 two
    assert [v for v, _ in batches] == [0, 0, 0, 2, 2]
    firsts = []
    for v, clips in batches:
        assert clips.shape == (3, T, C, H, W)
        for clip in clips:                                       # clip i = frames[i:i+T] of that one video
            frames = clip[:, 0, 0, 0]
            assert np.array_equal(frames, frames[0] + np.arange(T)) and frames[0] // 100 == v
        firsts.append(int(clips[0, 0, 0, 0, 0]))
        assert np.array_equal(clips[:, 0, 0, 0, 0], firsts[-1] + np.arange(3))    # consecutive clips
    assert firsts == [0, 3, 6, 200, 203]                         # distinct, in stream order
    assert [int(c[0, 0, 0, 0, 0]) for _, c in timing_batches(videos, T, batch=3, n_batches=4)] == [0, 3, 6, 200]


def test_too_short_for_one_batch_is_a_user_error():
    with pytest.raises(UserError, match="long enough for one timing batch"):
        timing_batches([video(5, 0), video(4, 10)], T, batch=4)
    with pytest.raises(UserError, match="timing-batches"):
        timing_batches([video(12, 0)], T, batch=2, n_batches=0)
    with pytest.raises(UserError, match="no batches"):
        time_runners({"a": SleepyRunner("a", 0, [])}, [])


def test_interleaved_rotated_warmup_untimed_and_reset_at_video_changes():
    log: list = []
    runners = {"a": SleepyRunner("a", 0, log), "b": SleepyRunner("b", 0, log), "c": SleepyRunner("c", 0, log)}
    batches = timing_batches([video(8, 0), video(6, 100)], T, batch=2, n_batches=5)   # video 0: 3 batches, video 1: 2
    assert [v for v, _ in batches] == [0, 0, 0, 1, 1]
    res = time_runners(runners, batches, warmup=2, rewarm=False)
    warm = len(runners) * (2 * 2 + 1)                            # per runner: (reset, infer) x 2, reset
    assert log[:warm] == [e for n in "abc" for e in
                          [("reset", n), ("infer", n, 0), ("reset", n), ("infer", n, 0), ("reset", n)]]
    timed = log[warm:]
    calls = [e for e in timed if e[0] == "infer"]
    order = [e[1] for e in calls]
    assert order == list("abc" "bca" "cab" "abc" "bca")          # every runner once per batch, start rotated
    assert [e[2] for e in calls] == [b for b in (0, 2, 4, 100, 102) for _ in range(3)]
    # a reset right before each runner's first call on each video, none elsewhere in the timed phase
    resets = [(i, e[1]) for i, e in enumerate(timed) if e[0] == "reset"]
    assert [n for _, n in resets] == ["a", "b", "c"] * 2
    for k, (i, n) in enumerate(resets):
        assert timed[i + 1] == ("infer", n, 0 if k < 3 else 100)
    for r in res.values():
        assert r["n_batches"] == 5 and r["warmup"] == 2          # warm-up counted, not timed


def test_each_timed_call_follows_an_untimed_call_on_the_previous_batch():
    """rewarm: the runner's pools are warm and a stateful runner sits where its stream left off."""
    log: list = []
    runners = {"a": SleepyRunner("a", 0, log), "b": SleepyRunner("b", 0, log)}
    batches = timing_batches([video(8, 0), video(6, 100)], T, batch=2, n_batches=5)
    time_runners(runners, batches, warmup=1)
    timed_phase = log[len(runners) * 3:]
    per_runner = {n: [e for e in timed_phase if e[1] == n] for n in "ab"}
    for n, events in per_runner.items():
        got = [("R",) if e[0] == "reset" else e[2] for e in events]
        assert got == [("R",), 0, ("R",), 0,            # video 0 starts: warm on its first batch, reset, time it
                       0, 2, 2, 4,                      # then each batch after the previous one
                       ("R",), 100, ("R",), 100,        # video 1 starts
                       100, 102], (n, got)
    # still interleaved: runner a's pair and runner b's pair alternate batch by batch
    pairs = [e[1] for e in timed_phase if e[0] == "infer"][::2]
    assert pairs == list("ab" "ba" "ab" "ba" "ab")


def test_medians_measure_the_sleep_ratio():
    log: list = []
    runners = {"fast": SleepyRunner("fast", 2.0, log), "slow": SleepyRunner("slow", 6.0, log)}
    batches = timing_batches([video(40, 0)], T, batch=4, n_batches=9)
    res = time_runners(runners, batches, warmup=1)
    fast, slow = res["fast"], res["slow"]
    assert fast["n_batches"] == slow["n_batches"] == 9
    assert fast["ms_per_call"] >= 2.0 and slow["ms_per_call"] >= 6.0
    assert slow["ms_per_clip"] == pytest.approx(slow["ms_per_call"] / 4)
    assert fast["p10_ms_per_clip"] <= fast["ms_per_clip"] <= fast["p90_ms_per_clip"]
    assert 2.0 < slow["ms_per_clip"] / fast["ms_per_clip"] < 3.5       # sleep overshoot only adds a little


def test_settings_read_threads_from_describe():
    runners = {"reference": SleepyRunner("torch", 0, [], {"threads": 2}),
               "candidate": SleepyRunner("ort", 0, [], {"threads": 2, "scan_threads": 1}),
               "other": SleepyRunner("x", 0, [])}
    s = timing_settings(runners, batch=16, warmup=3, n_batches=20)
    assert {k: s[k] for k in ("batch", "warmup", "n_batches", "interleaved", "rewarm")} == \
        {"batch": 16, "warmup": 3, "n_batches": 20, "interleaved": True, "rewarm": True}
    assert s["threads"] == {"reference": {"threads": 2}, "candidate": {"threads": 2, "scan_threads": 1}, "other": {}}
    assert ("torch_threads" in s) == ("torch" in sys.modules)
    line = describe_settings(s)
    assert line.startswith("median of 20 interleaved batches of 16 clips after 3 warm-ups, each timed call right "
                           "after an untimed one of the same runner; threads: ")
    assert "reference 2" in line and "candidate 2 (scan 1)" in line and "other" not in line
