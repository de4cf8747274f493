"""`brightness`: median over sampled frames of the mean luma (0-255); `black_frac`: the fraction of sampled
frames that are near black (95 % of their pixels at luma <= BLACK: fades, black leaders, a covered lens).

A frame's luma is BT.601 of the RGB the decoder produced (full range: black is 0). Very dark clips
(brightness < 30) and clips with black_frac > 0 often hold fades or leaders the splitter kept.
"""

from __future__ import annotations

import math

import numpy as np

from .base import ClipFrames, Scorer

BLACK = 24  # luma level under which a pixel counts as black
BLACK_SHARE = 0.95  # share of pixels that must be black for a near-black frame


class BrightnessScorer(Scorer):
    name = "brightness"
    columns = {"brightness": "float", "black_frac": "float"}

    def score(self, clip: ClipFrames) -> dict:
        y = clip.luma
        if not len(y):
            return {"brightness": math.nan, "black_frac": math.nan}
        flat = y.reshape(len(y), -1)
        black = np.percentile(flat, 100 * BLACK_SHARE, axis=1) <= BLACK
        return {"brightness": float(np.median(flat.mean(axis=1))), "black_frac": float(black.mean())}
