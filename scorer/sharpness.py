"""`sharpness`: variance of the Laplacian of luma at a 256-pixel short side, median over the sampled frames.

Higher is sharper. The same measure as Open-Sora 2.0's blur filter, at a fixed scale so the numbers of a
4K and a 480p source compare (at full resolution the variance falls with the pixel count). A defocused or
heavily compressed clip scores under ~50; a crisp textured one several hundred or more. Flat content (a
clear sky, a black frame) also scores low: read it with `brightness` and `black_frac`.
"""

from __future__ import annotations

import math

import numpy as np

from .base import ClipFrames, Scorer


def laplacian_variance(gray: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


class SharpnessScorer(Scorer):
    name = "sharpness"
    columns = {"sharpness": "float"}

    def score(self, clip: ClipFrames) -> dict:
        if not len(clip.frames):
            return {"sharpness": math.nan}
        return {"sharpness": float(np.median([laplacian_variance(g) for g in clip.luma]))}
