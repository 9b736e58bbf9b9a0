"""Synthetic Ped2-like surveillance scenes with labelled anomalies.

Why: the real benchmarks cannot be redistributed, yet every command (train, evaluate, export,
bench) needs data with ground truth for tests and demos. This module draws a fixed-camera
grayscale walkway scene seen from above, with pedestrians walking along two lanes, and test
videos with one anomalous event each.

Design rules (see docs/data.md):

* The scene layout (background texture, walkway geometry, fixed objects, lighting) depends only on
  ``scene`` and ``size``; ``seed`` changes pedestrians, timing and anomalies. A detector trained on
  seed 0 can therefore be evaluated on seed 1 of the same camera.
* Crowd density varies strongly over time, so global motion energy is dominated by the number
  of normal walkers; several anomalies are appearance-only, and event timing is counterbalanced
  against crowd activity. The frame-difference baseline must not solve the set
  (``benchmarks/synth_baseline.py`` checks this).
* Everything is deterministic for given arguments: same arguments, same bytes.

Coordinates are in output pixels (floats); shapes are drawn with cv2 on a 2x supersampled float
canvas and area-downsampled, which gives sub-pixel motion and soft edges.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d
from scipy.stats import rankdata

from ..errors import UserError
from .readers import label_runs

GENERATOR_VERSION = 2
FPS = 10
EVENT_TYPES = ("cyclist", "cart", "static_object", "unusual_object", "running", "wrong_way")
# The default test mix. ``wrong_way`` (a normal walker in the other lane's direction) is available
# through ``events=`` but left out of the default set: it differs from normal footage only by where
# a normal-looking walker moves in a normal-looking way, a scene-rule anomaly that frame prediction
# and reconstruction cannot see by construction (see README, Synthetic scene).
DEFAULT_EVENTS = ("cyclist", "cart", "static_object", "unusual_object", "running")
CLEAN = "clean"

_REF_H, _REF_W = 120, 160  # sizes and speeds below are quoted at this resolution
_SS = 2  # supersampling factor of the drawing canvas
_FP_SHIFT = 3  # cv2 fixed-point bits for sub-pixel coordinates
_FP = 1 << _FP_SHIFT
_WALK_SPEED = (1.0, 1.8)  # px/frame at 10 fps and 160 px width
_MAX_PEOPLE = 8
_NOISE_SIGMA = 2.0
_TIMING_CANDIDATES = 16  # event timings tried per event (see plan_video)
_MIN_VISIBLE = 0.2  # share of an event's largest on-screen area from which it is labelled (_collect)


# --------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------


class _Painter:
    """Draws primitives given in output-pixel coordinates onto the supersampled canvas.

    When ``mask`` is given, every primitive is also drawn there with value 1, so an anomalous
    object's pixel mask comes from exactly the same geometry as its pixels.
    """

    def __init__(self, canvas: np.ndarray, mask: np.ndarray | None = None):
        self.canvas = canvas
        self.mask = mask

    @staticmethod
    def _pt(x: float, y: float) -> tuple[int, int]:
        return (int(round((x * _SS - 0.5) * _FP)), int(round((y * _SS - 0.5) * _FP)))

    @staticmethod
    def _len(r: float) -> int:
        return max(0, int(round(r * _SS * _FP)))

    @staticmethod
    def _width(w: float) -> int:
        return max(1, int(round(w * _SS)))

    def _each(self, draw: Callable[[np.ndarray, float], None], val: float) -> None:
        draw(self.canvas, float(val))
        if self.mask is not None:
            draw(self.mask, 1)

    def ellipse(self, cx, cy, rx, ry, val, angle: float = 0.0) -> None:
        c, axes = self._pt(cx, cy), (self._len(rx), self._len(ry))
        self._each(lambda im, v: cv2.ellipse(im, c, axes, angle, 0, 360, v, -1, cv2.LINE_8,
                                             _FP_SHIFT), val)

    def ring(self, cx, cy, r, width, val) -> None:
        c, rr, th = self._pt(cx, cy), self._len(r), self._width(width)
        self._each(lambda im, v: cv2.circle(im, c, rr, v, th, cv2.LINE_8, _FP_SHIFT), val)

    def line(self, x0, y0, x1, y1, width, val) -> None:
        a, b, th = self._pt(x0, y0), self._pt(x1, y1), self._width(width)
        self._each(lambda im, v: cv2.line(im, a, b, v, th, cv2.LINE_8, _FP_SHIFT), val)

    def poly(self, pts: Sequence[tuple[float, float]], val) -> None:
        arr = np.array([self._pt(x, y) for x, y in pts], np.int32)
        self._each(lambda im, v: cv2.fillPoly(im, [arr], v, cv2.LINE_8, _FP_SHIFT), val)

    def rect(self, x0, y0, x1, y1, val) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], val)


# --------------------------------------------------------------------------------------------
# scene layout (depends on `scene` and `size` only)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Static camera view: background image plus walkway geometry used to place walkers."""

    size: tuple[int, int]
    background: np.ndarray  # float32 (SS*H, SS*W)
    center0: float  # walkway centre line y at x = W/2
    slope: float  # dy/dx of the walkway
    half_width: float  # walkway half width (each lane is one half)

    @property
    def fig_scale(self) -> float:
        """Figure size factor relative to the 120x160 reference."""
        return self.size[0] / _REF_H

    @property
    def speed_scale(self) -> float:
        return self.size[1] / _REF_W

    @property
    def margin(self) -> float:
        """How far outside the frame an object must be to be fully invisible."""
        return 16.0 * self.fig_scale

    def center(self, x):
        return self.center0 + self.slope * (np.asarray(x, dtype=np.float64) - self.size[1] / 2)

    def lane_y(self, lane: int, x):
        """Centre of lane 0 (upper, normal direction left to right) or 1 (lower, right to left)."""
        return self.center(x) + (-0.5 if lane == 0 else 0.5) * self.half_width

    def depth_scale(self, y: float) -> float:
        """Mild perspective: figures lower in the image (closer) are drawn larger."""
        top = self.center0 - self.half_width
        return 0.88 + 0.24 * float(np.clip((y - top) / (2 * self.half_width), 0.0, 1.0))


def lane_direction(lane: int) -> int:
    """Normal walking direction of a lane: +1 = left to right."""
    return 1 if lane == 0 else -1


def _noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Unit-variance smooth noise field (blurred white noise, rescaled)."""
    n = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap") if sigma > 0 else \
        rng.standard_normal(shape)
    return (n / (n.std() + 1e-9)).astype(np.float32)


def make_layout(scene: int = 0, size: tuple[int, int] = (_REF_H, _REF_W)) -> Layout:
    """Build the static view of camera ``scene``; the same scene always gives the same pixels."""
    h, w = int(size[0]), int(size[1])
    if h < 16 or w < 16:
        raise UserError(f"synthetic frame size {h}x{w} is too small (need at least 16x16)")
    rng = np.random.default_rng([int(scene), 0x5CE7E])
    H, W = h * _SS, w * _SS
    k = h / _REF_H

    center0 = h * rng.uniform(0.52, 0.6)
    slope = h * rng.uniform(-0.15, 0.15) / w
    half_width = h * rng.uniform(0.16, 0.19)
    layout = Layout((h, w), np.zeros((H, W), np.float32), center0, slope, half_width)  # geometry

    # grass: low-frequency patches + fine, slightly vertical blades
    grass_base = rng.uniform(88, 110)
    blades = gaussian_filter(rng.standard_normal((H, W)), (1.2 * _SS, 0.35 * _SS))
    blades = blades / (blades.std() + 1e-9)
    bg = (grass_base + 9 * _noise(rng, (H, W), 10 * _SS * k)
          + 4 * _noise(rng, (H, W), 2.5 * _SS * k) + 7 * blades
          + 3 * rng.standard_normal((H, W))).astype(np.float32)

    # walkway: lighter paving with slanted joints, a centre seam and darker curbs
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    xo, yo = (xs + 0.5) / _SS, (ys + 0.5) / _SS  # output-pixel coordinates
    d = yo - layout.center(xo).astype(np.float32)  # signed distance (vertical) from centre line
    on_walk = np.abs(d) <= half_width
    pave_base = rng.uniform(155, 172)
    pave = pave_base + 5 * _noise(rng, (H, W), 6 * _SS * k) + 3 * rng.standard_normal((H, W))
    slab = 9.0 * k
    joint_u = np.abs(((xo + 0.35 * d) / slab) % 1.0 - 0.5) > 0.5 - 0.06 / k
    row = np.abs(((d + half_width) / (half_width / 2)) % 1.0 - 0.5) > 0.5 - 0.05 / k
    pave = pave - 14 * joint_u - 9 * row
    pave = pave - 22 * (np.abs(d) < 0.45 * k)  # lane seam
    bg = np.where(on_walk, pave, bg)
    curb = (np.abs(d) > half_width - 1.0 * k) & (np.abs(d) <= half_width + 0.6 * k)
    bg = np.where(curb, bg - 40, bg).astype(np.float32)

    p = _Painter(bg)

    def off_walk_y(above: bool, gap: float) -> tuple[float, float]:
        x = float(rng.uniform(0.08 * w, 0.92 * w))
        yc = float(layout.center(x))
        y = yc - half_width - gap * k if above else yc + half_width + gap * k
        return x, y

    # bushes: dark textured blobs
    for _ in range(int(rng.integers(3, 6))):
        x, y = off_walk_y(bool(rng.random() < 0.5), rng.uniform(7, 14))
        y = float(np.clip(y, 4 * k, h - 4 * k))
        for _ in range(5):
            p.ellipse(x + rng.normal(0, 3 * k), y + rng.normal(0, 1.5 * k), rng.uniform(3, 6) * k,
                      rng.uniform(2.5, 4.5) * k, rng.uniform(45, 70))
    # bench above the walkway: seat, slats and legs
    bx, by = off_walk_y(True, rng.uniform(3, 5))
    bw = 16 * k
    p.rect(bx - bw / 2, by - 5 * k, bx + bw / 2, by - 2 * k, 70)
    for i in range(3):
        p.line(bx - bw / 2, by - 4.6 * k + i * k, bx + bw / 2, by - 4.6 * k + i * k, 0.4 * k, 120)
    for sx in (-1, 1):
        p.line(bx + sx * (bw / 2 - k), by - 2 * k, bx + sx * (bw / 2 - k), by, 0.8 * k, 50)
    p.rect(bx - bw / 2, by - 9 * k, bx + bw / 2, by - 7 * k, 80)  # backrest
    # lamp posts on the far side: thin pole rising into the grass, lamp head, shadow line
    for _ in range(int(rng.integers(1, 3))):
        lx, ly = off_walk_y(True, rng.uniform(1, 3))
        ly = float(max(ly, 26 * k))
        p.line(lx, ly, lx, ly - 24 * k, 1.0 * k, 45)
        p.ellipse(lx + 1.5 * k, ly - 24 * k, 3 * k, 1.3 * k, 215)
        p.line(lx + 1.0 * k, ly + 0.5 * k, lx + 8 * k, ly + 2 * k, 1.2 * k, 60)
    # a bin on the lower side
    tx, ty = off_walk_y(False, rng.uniform(3, 6))
    ty = float(np.clip(ty, 6 * k, h - 1))
    p.rect(tx - 2.5 * k, ty - 6 * k, tx + 2.5 * k, ty, 75)
    p.rect(tx - 3 * k, ty - 7 * k, tx + 3 * k, ty - 5.5 * k, 40)

    # lighting: a gentle gradient plus vignette, fixed per camera
    ang = rng.uniform(0, 2 * np.pi)
    g = ((xs / W - 0.5) * np.cos(ang) + (ys / H - 0.5) * np.sin(ang))
    vign = ((xs / W - 0.5) ** 2 + (ys / H - 0.5) ** 2)
    bg = bg * (1 + rng.uniform(0.1, 0.2) * g - 0.25 * vign)
    bg = gaussian_filter(bg, 0.5).astype(np.float32)
    return replace(layout, background=np.clip(bg, 0, 255).astype(np.float32))


def background_frame(layout: Layout) -> np.ndarray:
    """The noise-free, person-free view at output resolution (uint8); for tests and inspection."""
    h, w = layout.size
    bg = cv2.resize(layout.background, (w, h), interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(bg), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# actors
# --------------------------------------------------------------------------------------------


@dataclass
class _Actor:
    """One moving or static thing with per-frame position arrays (NaN = not in the video)."""

    kind: str
    x: np.ndarray
    y: np.ndarray
    phase: np.ndarray
    facing: int
    shades: tuple[float, ...]
    event: int | None = None  # index into the video's event list; None = normal
    variant: int = 0


def _shade(rng: np.random.Generator) -> float:
    """Clothing intensity: dark, mid or light, so walkers' contrast (and motion energy) varies."""
    r = rng.random()
    if r < 0.55:
        return float(rng.uniform(15, 60))
    if r < 0.7:
        return float(rng.uniform(90, 120))
    return float(rng.uniform(205, 245))


def _smooth(rng: np.random.Generator, n: int, corr: float) -> np.ndarray:
    """Zero-mean, roughly unit-variance temporally correlated noise."""
    x = rng.standard_normal(max(n, 1))
    if corr > 0:
        x = gaussian_filter1d(x, corr, mode="nearest") * math.sqrt(2 * math.sqrt(math.pi) * corr)
    return x[:n]


def _track(layout: Layout, rng: np.random.Generator, n: int, t0: int, lane: int, direction: int,
           speed: float, dt: float, stride: float, x0: float | None = None,
           pauses: Sequence[tuple[int, int]] = (), lateral: float | None = None,
           jitter: float = 0.08):
    """Simulate a walk along a lane from frame ``t0`` (may be negative) and return (x, y, phase).

    ``x0`` None means entering at the frame edge; ``pauses`` are [start, end) frame ranges in
    which the walker stands still. Returned arrays cover frames 0..n-1 with NaN before entry and
    after the actor has left the frame.
    """
    h, w = layout.size
    m = layout.margin
    steps = n - t0
    x = np.full(n, np.nan)
    y = np.full(n, np.nan)
    ph = np.full(n, np.nan)
    if steps <= 0:
        return x, y, ph
    v = speed * dt * (1 + jitter * _smooth(rng, steps, 8 / dt))
    for a, b in pauses:  # stop for a chat, a phone call, ...
        v[max(0, a - t0):max(0, b - t0)] = 0.0
    v = np.clip(v, 0, None)
    start = (-m if direction > 0 else w + m) if x0 is None else x0
    dist = np.concatenate([[0.0], np.cumsum(v)[:-1]])
    xs = start + direction * dist
    off = (rng.uniform(-0.28, 0.28) if lateral is None else lateral) * layout.half_width
    ys = layout.lane_y(lane, xs) + off + 0.8 * layout.fig_scale * _smooth(rng, steps, 15 / dt)
    phs = rng.uniform(0, 2 * np.pi) + 2 * np.pi * dist / stride
    inside = (xs > -m - 1) & (xs < w + m + 1)
    if x0 is None:  # entered at an edge: absent once it has left again
        left = np.nonzero(~inside & (np.arange(steps) > 0))[0]
        if left.size:
            inside[left[0]:] = False
    sel = slice(max(0, -t0), steps)
    tt = np.arange(steps)[sel] + t0
    keep = inside[sel]
    x[tt[keep]], y[tt[keep]], ph[tt[keep]] = xs[sel][keep], ys[sel][keep], phs[sel][keep]
    return x, y, ph


def _walker_speed(rng: np.random.Generator, layout: Layout) -> float:
    return float(rng.uniform(*_WALK_SPEED)) * layout.speed_scale


def _plan_crowd(layout: Layout, rng: np.random.Generator, n: int, dt: float) -> list[_Actor]:
    """Normal pedestrians: bursty group arrivals and group stops.

    Why: global motion energy should be dominated by how many normal walkers are moving, and
    that must swing strongly within each video (empty walkway to ~8 people, groups stopping to
    chat), so that one extra object cannot be found by motion energy alone.
    """
    h, w = layout.size
    k = layout.fig_scale
    transit = (w + 2 * layout.margin) / (_WALK_SPEED[0] * layout.speed_scale * dt)
    pre = int(transit + 90 / dt)  # lead-in: the walkway is already in its steady state at frame 0
    total = n + pre
    # arrival intensity per lane and frame: piecewise constant, strongly varying
    rate = np.zeros(total)
    busy = rng.uniform(0.6, 1.3)  # some videos are quiet, some crowded
    t = 0
    while t < total:
        seg = max(1, int(rng.uniform(25, 80) / dt))
        level = rng.choice([0.003, 0.008, 0.018, 0.035], p=[0.25, 0.3, 0.25, 0.2])
        rate[t:t + seg] = level * busy * dt
        t += seg
    # counts over the whole timeline including the lead-in, else the cap would favour the lead-in
    # and videos would systematically start crowded
    counts = np.zeros(total, np.int32)
    actors: list[_Actor] = []
    for tt in range(total):
        for lane in (0, 1):
            if rng.random() >= rate[tt]:
                continue
            size = int(rng.choice([1, 2, 3, 4, 5], p=[0.3, 0.2, 0.2, 0.15, 0.15]))
            speed = _walker_speed(rng, layout)
            direction = lane_direction(lane)
            t_start = tt  # on the extended timeline; video frame = timeline frame - pre
            pauses = []  # the group stops together, up to three times, to chat or look around
            a = t_start
            for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.2, 0.3, 0.3, 0.2]))):
                a += int(rng.uniform(0.08, 0.3) * (w + 2 * layout.margin) / (speed * dt))
                b = a + int(rng.uniform(10, 45) / dt)
                pauses.append((a, b))
                a = b
            group = []
            present = np.zeros(total, np.int32)
            gap = 0.0
            for _ in range(size):
                sub = np.random.default_rng(rng.integers(2**63))
                x, y, ph = _track(layout, sub, total, t_start + int(gap), lane, direction,
                                  speed * rng.uniform(0.97, 1.03), dt, rng.uniform(9, 12) * k,
                                  pauses=pauses)
                present += ~np.isnan(x)
                gap += rng.uniform(0, 8) * layout.speed_scale / (speed * dt)
                group.append(_Actor("walker", x[pre:], y[pre:], ph[pre:], direction,
                                    (_shade(rng), _shade(rng) * 0.8, float(rng.uniform(25, 150)))))
            if np.max(counts + present) > _MAX_PEOPLE:
                continue
            counts += present
            actors.extend(g for g in group if not np.all(np.isnan(g.x)))
    return actors


def _event_window(rng: np.random.Generator, n: int) -> int:
    """Event length: roughly 30-60% of the video."""
    return max(1, int(round(rng.uniform(0.3, 0.6) * n)))


def _plan_event(layout: Layout, rng: np.random.Generator, n: int, etype: str, ev: int,
                dt: float) -> list[_Actor]:
    """Actors of one anomalous event, all tagged with event index ``ev``."""
    h, w = layout.size
    k, m = layout.fig_scale, layout.margin
    span = w + 2 * m
    dur = _event_window(rng, n)
    shades = (_shade(rng), _shade(rng) * 0.8, float(rng.uniform(25, 150)))
    actors: list[_Actor] = []

    if etype in ("cyclist", "running"):
        # fast movers cross in a few seconds: several passes back to back keep the event going
        factor = rng.uniform(3.0, 4.0) if etype == "cyclist" else rng.uniform(2.7, 3.3)
        speed = 1.4 * factor * layout.speed_scale
        transit = span / (speed * dt)
        start = int(rng.integers(0, max(1, n - dur + 1)))
        t_enter = float(start)
        while True:
            lane = int(rng.integers(0, 2))
            d = lane_direction(lane)
            x, y, ph = _track(layout, rng, n, int(t_enter), lane, d, speed * rng.uniform(0.9, 1.1),
                              dt, (16 if etype == "running" else 14) * k, jitter=0.04)
            kind = "cyclist" if etype == "cyclist" else "runner"
            look = (_shade(rng), _shade(rng) * 0.8, float(rng.uniform(25, 150)))
            if kind == "cyclist":  # sports clothing: mid to light, the bike is what stands out
                look = (float(rng.uniform(110, 235)), float(rng.uniform(90, 200)), look[2])
            actors.append(_Actor(kind, x, y, ph, d, look, ev, int(rng.integers(0, 2))))
            t_enter += transit * rng.uniform(0.85, 1.0)  # next one appears as this one leaves
            if t_enter + transit * 0.5 > start + dur or t_enter >= n:
                break
        return actors

    if etype == "static_object":
        lane = int(rng.integers(0, 2))
        x0 = float(rng.uniform(0.25, 0.75) * w)
        y0 = float(layout.lane_y(lane, x0) + rng.uniform(-0.2, 0.2) * layout.half_width)
        x = np.full(n, np.nan)
        start = int(rng.integers(0, n - dur + 1))  # left behind, later picked up (or not)
        x[start:start + dur] = x0
        y = np.where(np.isnan(x), np.nan, y0)
        return [_Actor("static_object", x, y, np.zeros(n), 1, shades, ev, int(rng.integers(0, 2)))]

    # walking-speed movers: appearance-only (cart, unusual object) or direction-only (wrong way)
    lane = int(rng.integers(0, 2))
    d = lane_direction(lane) * (-1 if etype == "wrong_way" else 1)
    # carts and wheelchairs roll a little slower than people walk
    speed = _walker_speed(rng, layout) * (1.0 if etype == "wrong_way" else 0.8)
    transit = span / (speed * dt)
    kind = {"cart": "cart", "unusual_object": "unusual", "wrong_way": "walker"}[etype]
    stride = rng.uniform(9, 12) * k
    # appearance anomalies often halt for a while (a parked cart, a wheelchair waiting): they must
    # be found by how they look, not by the motion they add. They halt well inside the frame.
    stop = 0
    if etype != "wrong_way" and rng.random() < 0.8:
        stop = int(rng.uniform(0.3, 0.6) * dur)
    inside = int(35 * k / (speed * dt))  # frames to get 35 px (at 120x160) into the picture
    variant = int(rng.integers(0, 2))
    edge = _half_extent(layout, kind)  # centre this far outside the frame = out of view
    lead = int((m - edge) / (speed * dt))  # frames from the track start to the first glimpse
    modes = ["enter", "leave"] + ([] if etype == "wrong_way" else ["u_turn"])
    mode = "through" if transit <= dur else modes[int(rng.integers(0, len(modes)))]
    if mode == "through":  # the whole crossing fits
        t0 = int(rng.integers(0, max(1, n - int(transit) - stop + 1)))
        pause = (t0 + int(0.4 * transit), t0 + int(0.4 * transit) + stop)
        x, y, ph = _track(layout, rng, n, t0, lane, d, speed, dt, stride, pauses=[pause])
    elif mode == "enter":  # comes in and is still there when the video stops
        a = n - dur + max(inside, int(rng.uniform(0.3, 0.5) * dur))
        x, y, ph = _track(layout, rng, n, n - dur - lead, lane, d, speed, dt, stride,
                          pauses=[(a, a + stop)])
    elif mode == "leave":  # already in view at the start, leaves after `dur` frames
        a = int(rng.uniform(0.1, 0.4) * dur)
        stop = max(0, min(stop, dur - a - inside))
        exit_edge = w + edge if d > 0 else -edge
        x0 = exit_edge - d * speed * dt * (dur - stop)
        x, y, ph = _track(layout, rng, n, 0, lane, d, speed, dt, stride, x0=x0, jitter=0.0,
                          pauses=[(a, a + stop)])
        gone = (x > w + m) | (x < -m)
        x[gone], y[gone] = np.nan, np.nan
    else:  # u_turn: comes in, halts, turns round and leaves the way it came
        start = int(rng.integers(0, n - dur + 1))
        half = max(inside, (dur - stop) // 2)
        stop = max(0, dur - 2 * half)
        turn = start + half + stop
        x, y, ph = _track(layout, rng, n, start - lead, lane, d, speed, dt, stride,
                          pauses=[(start + half, turn)], jitter=0.0)
        back_x, back_y = np.full(n, np.nan), np.full(n, np.nan)
        t_back = np.arange(turn + 1, n)
        src = 2 * turn - t_back  # retrace the way in, mirrored in time
        ok = src >= 0
        back_x[t_back[ok]], back_y[t_back[ok]] = x[src[ok]], y[src[ok]]
        x[turn + 1:], y[turn + 1:] = np.nan, np.nan
        return [_Actor(kind, x, y, ph, d, shades, ev, variant),
                _Actor(kind, back_x, back_y, np.zeros(n), -d, shades, ev, variant)]
    return [_Actor(kind, x, y, ph, d, shades, ev, variant)]


# --------------------------------------------------------------------------------------------
# sprites: (x, y) is the bottom centre (feet / ground contact); h the figure height
# --------------------------------------------------------------------------------------------


def _draw_person(p: _Painter, x, y, h, ph, d, shades, run=False) -> None:
    shirt, pants, head = shades
    amp = (0.34 if run else 0.2) * h
    lean = (0.12 * h * d) if run else 0.0
    sw = math.sin(ph)
    hip_y = y - 0.47 * h
    p.line(x, hip_y, x - amp * sw, y - (0.05 * h * max(0, sw) if run else 0), 0.15 * h, pants * 0.9)
    p.line(x, hip_y, x + amp * sw, y - (0.05 * h * max(0, -sw) if run else 0), 0.15 * h, pants)
    sx = x + lean
    p.poly([(x - 0.16 * h, hip_y + 0.02 * h), (x + 0.16 * h, hip_y + 0.02 * h),
            (sx + 0.2 * h, y - 0.79 * h), (sx - 0.2 * h, y - 0.79 * h)], shirt)
    arm = 0.8 * amp * sw
    if run:  # bent arms pumping
        p.line(sx, y - 0.74 * h, sx + arm, y - 0.58 * h, 0.1 * h, shirt * 0.85)
        p.line(sx + arm, y - 0.58 * h, sx + arm + 0.1 * h * d, y - 0.68 * h, 0.1 * h, shirt * 0.85)
    else:
        p.line(sx, y - 0.75 * h, sx + arm, y - 0.44 * h, 0.1 * h, shirt * 0.85)
    p.ellipse(sx + 0.02 * h * d, y - 0.89 * h, 0.11 * h, 0.12 * h, head)


def _draw_walker(p, a, t, layout):
    h = 14 * layout.fig_scale * layout.depth_scale(a.y[t])
    _draw_person(p, a.x[t], a.y[t], h, a.phase[t], a.facing, a.shades)


def _draw_runner(p, a, t, layout):
    h = 14 * layout.fig_scale * layout.depth_scale(a.y[t])
    _draw_person(p, a.x[t], a.y[t], h, a.phase[t], a.facing, a.shades, run=True)


def _draw_cyclist(p, a, t, layout):
    h = 14 * layout.fig_scale * layout.depth_scale(a.y[t])
    x, y, d, ph = a.x[t], a.y[t], a.facing, a.phase[t]
    r = 0.21 * h
    frame_val = 205.0 if a.variant == 0 else 60.0
    rx, fx = x - 0.4 * h * d, x + 0.4 * h * d
    hub_y = y - r
    bb = (x - 0.05 * h * d, hub_y)
    seat = (x - 0.12 * h * d, y - 0.6 * h)
    bar = (x + 0.3 * h * d, y - 0.68 * h)
    for cx in (rx, fx):
        p.ring(cx, hub_y, r, 0.11 * h, 30 if a.variant == 0 else 235)
    p.line(rx, hub_y, *bb, 0.08 * h, frame_val)
    p.line(*bb, *seat, 0.08 * h, frame_val)
    p.line(rx, hub_y, *seat, 0.08 * h, frame_val)
    p.line(*seat, bar[0] - 0.05 * h * d, seat[1], 0.08 * h, frame_val)
    p.line(bar[0] - 0.05 * h * d, seat[1], bb[0], bb[1], 0.08 * h, frame_val)
    p.line(fx, hub_y, *bar, 0.08 * h, frame_val)
    shirt, pants, head = a.shades
    for s in (0, math.pi):  # pedalling legs: hip -> knee -> pedal
        pedal = (bb[0] + 0.14 * h * math.cos(ph + s), bb[1] + 0.14 * h * math.sin(ph + s))
        knee = ((seat[0] + pedal[0]) / 2 + 0.12 * h * d, (seat[1] + pedal[1]) / 2 - 0.05 * h)
        p.line(*seat, *knee, 0.13 * h, pants)
        p.line(*knee, *pedal, 0.11 * h, pants)
    shoulder = (x + 0.08 * h * d, y - 1.0 * h)
    p.line(*seat, *shoulder, 0.2 * h, shirt)
    p.line(*shoulder, *bar, 0.09 * h, shirt * 0.85)
    p.ellipse(shoulder[0] + 0.06 * h * d, shoulder[1] - 0.12 * h, 0.11 * h, 0.12 * h, head)


def _draw_cart(p, a, t, layout):
    """A utility cart: long body with bold stripes along the motion, roof on posts, wheels."""
    h = 14 * layout.fig_scale * layout.depth_scale(a.y[t])
    x, y = a.x[t], a.y[t]
    hl = 0.85 * h
    # a long box close to the paving with bold stripes: its look is what is unusual; its outline
    # (all that frame differencing sees) moves at walking speed like a walker's
    body = 225.0 if a.variant == 0 else 35.0
    stripe = 30.0 if a.variant == 0 else 235.0
    p.rect(x - hl, y - 0.6 * h, x + hl, y - 0.14 * h, body)
    for yy in (y - 0.47 * h, y - 0.27 * h):
        p.line(x - hl, yy, x + hl, yy, 0.1 * h, stripe)
    for sx in (-0.75, 0.75):
        p.line(x + sx * h, y - 0.6 * h, x + sx * h, y - 0.9 * h, 0.08 * h, 110)
    p.rect(x - hl - 0.04 * h, y - 1.0 * h, x + hl + 0.04 * h, y - 0.88 * h, stripe)
    for sx in (-0.55, 0.55):
        p.ellipse(x + sx * h, y - 0.12 * h, 0.15 * h, 0.13 * h, 60)


def _draw_static(p, a, t, layout):
    """Something left on the walkway: a checkered crate or a large white sack with a dark band."""
    h = 14 * layout.fig_scale * layout.depth_scale(a.y[t])
    x, y = a.x[t], a.y[t]
    if a.variant == 0:
        hw, top = 0.55 * h, 0.75 * h
        p.rect(x - hw, y - top, x + hw, y, 30)
        for i in range(2):  # 2 x 2 checker of bright panels inside the dark frame
            for j in range(2):
                if (i + j) % 2 == 0:
                    x0 = x - hw + 0.08 * h + i * (hw - 0.08 * h)
                    y0 = y - top + 0.08 * h + j * (top / 2 - 0.08 * h)
                    p.rect(x0, y0, x0 + hw - 0.08 * h, y0 + top / 2 - 0.08 * h, 240)
    else:
        p.ellipse(x, y - 0.3 * h, 0.6 * h, 0.3 * h, 238)
        p.line(x - 0.55 * h, y - 0.3 * h, x + 0.55 * h, y - 0.3 * h, 0.14 * h, 25)
        p.ellipse(x, y - 0.62 * h, 0.12 * h, 0.08 * h, 25)


def _draw_unusual(p, a, t, layout):
    """Never-seen shapes at walking speed: a person carrying a large sign board, or a wheelchair."""
    h = 14 * layout.fig_scale * layout.depth_scale(a.y[t])
    x, y, d = a.x[t], a.y[t], a.facing
    if a.variant == 0:
        _draw_person(p, x, y, h, a.phase[t], d, a.shades)
        bx = x + 0.1 * h * d  # the board, carried in front at chest height: wide, bright, framed
        p.rect(bx - 0.7 * h, y - 1.05 * h, bx + 0.7 * h, y - 0.5 * h, 25)
        p.rect(bx - 0.6 * h, y - 0.97 * h, bx + 0.6 * h, y - 0.58 * h, 240)
        p.line(bx - 0.6 * h, y - 0.775 * h, bx + 0.6 * h, y - 0.775 * h, 0.09 * h, 25)
    else:
        shirt, pants, head = a.shades
        wheel = (x - 0.12 * h * d, y - 0.4 * h)
        p.ring(*wheel, 0.4 * h, 0.13 * h, 235)
        p.line(wheel[0] - 0.3 * h, wheel[1], wheel[0] + 0.3 * h, wheel[1], 0.07 * h, 235)
        p.line(wheel[0], wheel[1] - 0.3 * h, wheel[0], wheel[1] + 0.3 * h, 0.07 * h, 235)
        p.ellipse(x + 0.45 * h * d, y - 0.07 * h, 0.08 * h, 0.08 * h, 30)
        p.line(*wheel, x + 0.45 * h * d, y - 0.07 * h, 0.07 * h, 30)
        seat = (x - 0.08 * h * d, y - 0.5 * h)
        p.line(*seat, x + 0.3 * h * d, seat[1], 0.14 * h, pants)  # thighs
        p.line(x + 0.3 * h * d, seat[1], x + 0.34 * h * d, y - 0.08 * h, 0.12 * h, pants)
        sh = (x - 0.12 * h * d, y - 0.88 * h)
        p.line(*seat, *sh, 0.26 * h, shirt)
        p.ellipse(sh[0] + 0.04 * h * d, y - 1.0 * h, 0.11 * h, 0.12 * h, head)


_DRAW = {"walker": _draw_walker, "runner": _draw_runner, "cyclist": _draw_cyclist,
         "cart": _draw_cart, "static_object": _draw_static, "unusual": _draw_unusual}


# --------------------------------------------------------------------------------------------
# rendering and planning of one video
# --------------------------------------------------------------------------------------------


# half the horizontal size of each sprite, in figure heights (see the _draw_* functions)
_HALF_EXTENT = {"walker": 0.25, "runner": 0.4, "cyclist": 0.6, "cart": 0.9,
                "static_object": 0.6, "unusual": 0.8}


def _half_extent(layout: Layout, kind: str) -> float:
    return _HALF_EXTENT[kind] * 14 * layout.fig_scale


def _moving_count(actors: list[_Actor], n: int) -> np.ndarray:
    """Number of walkers in view and moving, per frame: the crowd's activity."""
    count = np.zeros(n)
    for a in actors:
        step = np.abs(np.diff(a.x, prepend=np.nan))
        count += np.nan_to_num(step) > 1e-3
    return count


def _on_screen(actors: list[_Actor], layout: Layout, n: int) -> np.ndarray:
    """Frames in which any of the actors is (roughly) visible."""
    vis = np.zeros(n, bool)
    for a in actors:
        half = _half_extent(layout, a.kind)
        with np.errstate(invalid="ignore"):
            vis |= (a.x > -half) & (a.x < layout.size[1] + half)
    return vis


def _rank_auc(values: np.ndarray, flags: np.ndarray) -> float:
    """Mann-Whitney AUC of ``values`` for flagged vs other frames; 0.5 when undefined."""
    n_pos = int(flags.sum())
    n_neg = flags.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    ranks = rankdata(values)  # average ranks: ties count one half
    return float((ranks[flags].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass
class VideoPlan:
    """Everything needed to render one video: its actors, event types and the sensor's drift."""

    n_frames: int
    actors: list[_Actor]
    events: tuple[str, ...]
    gain: np.ndarray  # per-frame global brightness factor
    noise_seed: int


def plan_video(layout: Layout, rng: np.random.Generator, n_frames: int,
               events: Sequence[str] = (), fps: float = FPS) -> VideoPlan:
    """Plan crowd, anomalies and lighting drift; ``fps`` rescales motion so real speeds stay put.

    Event timing is counterbalanced: of several random timings, the one whose frames see the most
    typical number of moving walkers is kept. Why: the crowd changes slowly (a walker stays in view
    for 10-20 s), so an event that happens to coincide with a busy or quiet spell would be found
    or missed by motion energy through luck alone, for the baseline and for any model.
    """
    _check_events(events)
    if n_frames < 1:
        raise UserError("a synthetic video needs at least one frame")
    if fps <= 0:
        raise UserError(f"fps must be positive, got {fps}")
    dt = FPS / float(fps)
    actors = _plan_crowd(layout, rng, n_frames, dt)
    moving = _moving_count(actors, n_frames)
    for i, e in enumerate(events):
        ev_rng = np.random.default_rng(rng.integers(2**63))
        best, best_key = None, None
        for _ in range(_TIMING_CANDIDATES):
            cand = _plan_event(layout, ev_rng, n_frames, e, i, dt)
            seen = _on_screen(cand, layout, n_frames)
            # an event must be on screen for a good part of the video before balance matters
            key = (seen.sum() < 0.2 * n_frames, abs(_rank_auc(moving, seen) - 0.5), -seen.sum())
            if best_key is None or key < best_key:
                best, best_key = cand, key
        actors += best
    t = np.arange(n_frames) * dt
    period = rng.uniform(150, 400)
    gain = (1 + rng.uniform(0.01, 0.03) * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
            + rng.uniform(-0.02, 0.02) * (t / max(t[-1], 1) - 0.5))
    return VideoPlan(n_frames, actors, tuple(events), gain, int(rng.integers(2**63)))


def render(layout: Layout, plan: VideoPlan) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Yield (frame uint8 (H, W), per-event object masks uint8 (H, W)) for every frame."""
    h, w = layout.size
    m = layout.margin
    rng = np.random.default_rng(plan.noise_seed)
    for t in range(plan.n_frames):
        canvas = layout.background.copy()
        present = [a for a in plan.actors
                   if not np.isnan(a.x[t]) and -m - 1 < a.x[t] < w + m + 1]
        present.sort(key=lambda a: (a.y[t], a.x[t]))  # far (upper) first, near drawn on top
        masks = [np.zeros((h, w), np.uint8) for _ in plan.events]
        for a in present:
            big = None if a.event is None else np.zeros(canvas.shape, np.uint8)
            _DRAW[a.kind](_Painter(canvas, big), a, t, layout)
            if big is not None:
                cover = cv2.resize(big.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
                masks[a.event] |= (cover >= 0.5).astype(np.uint8)
        frame = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA) * np.float32(plan.gain[t])
        frame += rng.standard_normal((h, w), dtype=np.float32) * np.float32(_NOISE_SIGMA)
        yield np.clip(np.rint(frame), 0, 255).astype(np.uint8), masks


def _event_records(events: Sequence[str], visible: np.ndarray) -> list[dict]:
    """JSON event list: one record per contiguous run of frames in which the event is visible."""
    out = []
    for i, e in enumerate(events):
        out += [{"type": e, "start": s, "end": t} for s, t in label_runs(visible[:, i])]
    return sorted(out, key=lambda r: (r["start"], r["type"]))


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def event_assignment(seed: int, scene: int, n_test: int,
                     events: Sequence[str] = DEFAULT_EVENTS) -> list[str]:
    """Which event (or ``clean``) each test video gets, shuffled by the seed.

    Every type of ``events`` appears when n_test >= len(events) + 2 (plus two clean videos);
    fewer videos take anomaly types first, more videos cycle through the list again.
    """
    if not events:
        raise UserError("choose at least one synthetic event type")
    _check_events(events)
    rng = np.random.default_rng([int(seed), int(scene), 2])
    base = [events[i] for i in rng.permutation(len(events))] + [CLEAN, CLEAN]
    picked = [base[i % len(base)] for i in range(n_test)]
    return [picked[i] for i in rng.permutation(n_test)]


def _write_pngs(folder: Path, frames_iter, n: int, on_frame: Callable[[], None]):
    """Write frames as numbered PNGs and collect the per-event masks."""
    folder.mkdir(parents=True)
    width = max(4, len(str(n - 1)))
    masks = []
    for t, (frame, m) in enumerate(frames_iter):
        if not cv2.imwrite(str(folder / f"{t:0{width}d}.png"), frame):
            raise UserError(f"cannot write {folder / f'{t:0{width}d}.png'}")
        masks.append(m)
        on_frame()
    return masks


def generate_scene(out: Path, seed: int = 0, size: tuple[int, int] = (120, 160), n_train: int = 8,
                   n_test: int = 7, train_frames: int = 160, test_frames: int = 120, scene: int = 0,
                   progress: Callable[[int, int], None] | None = None,
                   events: Sequence[str] = DEFAULT_EVENTS) -> dict:
    """Write a synthetic dataset in the generic ``frames`` layout and return its scene.json dict.

    ``scene.json`` keys videos as ``training/<vid>`` and ``testing/<vid>`` (folder names repeat
    across splits); each entry has split, name, n_frames, anomaly (event type, ``clean`` or None
    for training) and events: [{type, start, end}] with 0-based inclusive frame indices, one per
    run of labelled frames. The set is built in a temporary folder beside ``out`` and renamed into
    place at the end, so an interrupted run never leaves a half-written dataset.
    ``progress(done, total)`` counts frames.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty; choose a new folder")
    if n_train < 0 or n_test < 0 or train_frames < 2 or test_frames < 2:
        raise UserError("need n_train, n_test >= 0 and at least 2 frames per video")
    _check_seed(seed, scene)
    assign = event_assignment(seed, scene, n_test, tuple(events))  # validates the event names
    layout = make_layout(scene, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # (not mkdtemp: its 0700 mode would survive the rename)
    total = n_train * train_frames + n_test * test_frames
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    width = max(2, len(str(max(n_train, n_test))))
    videos: dict[str, dict] = {}
    try:
        for i in range(n_train):
            vid = f"{i + 1:0{width}d}"
            plan = plan_video(layout, np.random.default_rng([seed, scene, 0, i]), train_frames)
            _write_pngs(tmp / "training" / "frames" / vid, render(layout, plan), train_frames, tick)
            videos[f"training/{vid}"] = {"split": "training", "name": vid,
                                         "n_frames": train_frames, "events": [], "anomaly": None}
        (tmp / "testing" / "test_frame_mask").mkdir(parents=True, exist_ok=True)
        (tmp / "testing" / "test_pixel_mask").mkdir(parents=True, exist_ok=True)
        for i, kind in enumerate(assign):
            vid = f"{i + 1:0{width}d}"
            events = () if kind == CLEAN else (kind,)
            plan = plan_video(layout, np.random.default_rng([seed, scene, 1, i]), test_frames,
                              events)
            per_frame = _write_pngs(tmp / "testing" / "frames" / vid, render(layout, plan),
                                    test_frames, tick)
            labels, pixel, visible = _collect(per_frame, size, len(events))
            np.save(tmp / "testing" / "test_frame_mask" / f"{vid}.npy", labels)
            _save_npz(tmp / "testing" / "test_pixel_mask" / f"{vid}.npz", masks=pixel)
            videos[f"testing/{vid}"] = {"split": "testing", "name": vid, "n_frames": test_frames,
                                        "events": _event_records(events, visible),
                                        "anomaly": kind}
        meta = {"fps": FPS, "size": [int(size[0]), int(size[1])], "seed": int(seed),
                "scene": int(scene), "videos": videos,
                "generator_version": GENERATOR_VERSION}
        (tmp / "scene.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _check_events(events: Sequence[str]) -> None:
    for e in events:
        if e not in EVENT_TYPES:
            raise UserError(f"unknown synthetic event {e!r}; choose from {', '.join(EVENT_TYPES)}")


def _check_seed(seed: int, scene: int) -> None:
    if int(seed) < 0 or int(scene) < 0:
        raise UserError(f"seed and scene must be >= 0, got seed={seed}, scene={scene}")


def _collect(per_frame: list[list[np.ndarray]], size, n_events: int):
    """Frame labels, pixel masks and per-event visibility from the renderer's per-event masks.

    An event counts as in view once at least ``_MIN_VISIBLE`` of its largest on-screen area is
    inside the frame: the first few pixels of an object sliding in at the border are not yet
    recognisable as anything (annotators of the real benchmarks mark an anomaly once it can be
    seen). Frames below that share get neither a label nor pixel-mask pixels.
    """
    h, w = int(size[0]), int(size[1])
    n = len(per_frame)
    area = np.array([[int(m.sum()) for m in ms] for ms in per_frame], np.int64).reshape(n, n_events)
    visible = (area > 0) & (area >= _MIN_VISIBLE * area.max(axis=0, initial=0)[None, :])
    pixel = np.zeros((n, h, w), np.uint8)
    for t, ms in enumerate(per_frame):
        for i, m in enumerate(ms):
            if visible[t, i]:
                pixel[t] |= m
    labels = pixel.reshape(n, -1).any(axis=1).astype(np.uint8)
    return labels, pixel, visible


def render_video_file(out_path: Path, seed: int, n_frames: int,
                      events: Sequence[str] = ("cyclist",), size: tuple[int, int] = (120, 160),
                      fps: float = FPS, scene: int = 0) -> np.ndarray:
    """Write a synthetic test video (.avi MJPG or .mp4 mp4v) and return its frame labels (uint8).

    ``events`` lists the event types in the video, each with its own timing; () gives a clean
    video. Motion is planned at real-world speed, so a 30 fps file shows the same scene as the
    10 fps data, with a third of the motion per frame (for testing frame-rate resampling).
    """
    out_path = Path(out_path)
    _check_seed(seed, scene)
    codecs = {".avi": "MJPG", ".mp4": "mp4v"}
    codec = codecs.get(out_path.suffix.lower())
    if codec is None:
        raise UserError(f"unsupported video extension {out_path.suffix!r}; use .avi or .mp4")
    layout = make_layout(scene, size)
    plan = plan_video(layout, np.random.default_rng([seed, scene, 3]), n_frames, tuple(events),
                      fps=fps)
    h, w = layout.size
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.tmp-{os.getpid()}{out_path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), float(fps), (w, h))
    if not writer.isOpened():
        raise UserError(f"OpenCV cannot write {codec} video to {out_path}")
    per_frame = []
    try:
        for frame, masks in render(layout, plan):
            per_frame.append(masks)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        writer.release()
        labels = _collect(per_frame, (h, w), len(plan.events))[0]
        os.replace(tmp, out_path)
    except BaseException:
        writer.release()
        tmp.unlink(missing_ok=True)
        raise
    return labels
