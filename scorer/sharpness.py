"""`sharpness`: variance of the Laplacian of luma at a 256-pixel short side, median over the sampled frames.

Higher is sharper. The same measure as Open-Sora 2.0's blur filter, at a fixed scale so the numbers of a
4K and a 480p source compare (at full resolution the variance falls with the pixel count). A defocused or
heavily compressed clip scores under ~50; a crisp textured one several hundred or more. Flat content (a
clear sky, a black frame) also scores low: read it with `brightness` and `black_frac`.

A source whose short side n is under 256 is measured at its own size, never scaled up: an upscale is a blur,
and hides part of what a blurred copy loses (on a real 320x180 frame of cityCC0.mpg, a Gaussian of 0.5 px
left 0.46x of the sharp copy's variance at native size, 0.51x once both were scaled up to 256). Measured at
n, the same picture scores higher than at 256 (ten frames of bikes.mp4, cityCC0.mpg and Big Buck Bunny,
area-downscaled: the variance at 180 was 1.3-2.8x that at 256, median 1.8x), so the variance at n is scaled
by (n / 256) ** 2 to read on the 256 scale: a little under, on the side of calling a small source blurry.
"""

from __future__ import annotations

import math

import numpy as np

from .base import SHORT_SIDE, ClipFrames, Scorer

SCALE_POWER = 2.0  # variance at short side n < 256 -> the 256 scale: times (n / 256) ** SCALE_POWER


def laplacian_variance(gray: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def sharpness(gray: np.ndarray) -> float:
    """One (H, W) luma frame's sharpness on the 256 scale (H, W as decoded: short side 256, or less)."""
    short = min(gray.shape[:2])
    return laplacian_variance(gray) * min(1.0, short / SHORT_SIDE) ** SCALE_POWER


class SharpnessScorer(Scorer):
    name = "sharpness"
    columns = {"sharpness": "float"}

    def score(self, clip: ClipFrames) -> dict:
        if not len(clip.frames):
            return {"sharpness": math.nan}
        return {"sharpness": float(np.median([sharpness(g) for g in clip.detail_luma]))}
