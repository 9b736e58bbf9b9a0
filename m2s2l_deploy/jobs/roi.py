"""A region of interest for one camera: an image mask (white = watched) applied to its scores.

Why on the score map and not the input: the frame score is computed inside the model graph over
the whole frame, and blanking pixels of the input would show the model a scene it never saw. The
score map says where the frame departs from normal footage: a frame whose hottest patch (the mean
over a window of an eighth of the map's smaller side) lies outside the mask is scored as at most
the threshold, so activity outside the region can neither raise nor extend an alert; inside, the
model's score stands. The mask is given in camera-frame coordinates (any size with the frame's
aspect ratio) and mapped onto the model's input as frames are (stretched, or letterboxed with the
padding outside the region).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract import InputContract, letterbox_geometry
from ..data.video import read_image
from ..errors import UserError


class RegionOfInterest:
    def __init__(self, path: Path, contract: InputContract):
        import cv2
        self.path = Path(path)
        img = read_image(self.path)
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        h, w = contract.height, contract.width
        mask = np.zeros((h, w), bool)
        if contract.resize == "letterbox":
            _, top, left, nh, nw = letterbox_geometry(img.shape, (h, w))
        else:
            top, left, nh, nw = 0, 0, h, w
        mask[top:top + nh, left:left + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_NEAREST) > 127
        if not mask.any():
            raise UserError(f"region-of-interest mask {self.path} is empty: white (> 127) marks the watched region")
        self.mask = mask
        self.window = max(3, min(h, w) // 8)
        self.fraction = float(mask.mean())

    def hottest_inside(self, score_map: np.ndarray) -> bool:
        """Whether the window with the highest mean of ``score_map`` (h, w) is centred in the region."""
        import cv2
        pooled = cv2.blur(np.asarray(score_map, np.float32), (self.window, self.window),
                          borderType=cv2.BORDER_REFLECT)
        y, x = np.unravel_index(int(np.argmax(pooled)), pooled.shape)
        return bool(self.mask[y, x])

    def score(self, score: float, score_map: np.ndarray, threshold: float) -> float:
        """The frame's score for alerts: itself inside the region, at most ``threshold`` outside."""
        return float(score) if self.hottest_inside(score_map) else min(float(score), threshold)
