"""The frames every scorer reads, and the scorer base class.

One sequential decode of a source serves all its clips (`scorer.stage`). For each clip it keeps the frames
sampled at `--sample-fps`, decoded straight to a 256-pixel short side by the decoder's scaler, and for each
sampled frame the frame right after it: optical flow is measured over that one-frame step, so `motion` is in
pixels per frame by construction and a fast pan (50 px between two samples half a second apart) never
exceeds what a flow pyramid can follow. Every scorer reads these same arrays; flow, luma and the mask of
textured pixels (where motion is observable) are computed once, on first use, and shared (`motion` and
`camera_motion` read the same flow field).

A source whose short side is under 256 is never scaled up in the decoder: it is decoded at its own size and
scaled up after (`fit`), so every score reads the same 256-pixel frames whatever the source, except those
that measure detail (`sharpness`), which read the frames as decoded (`ClipFrames.detail_luma`): an upscale
is a blur.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import numpy as np

SHORT_SIDE = 256  # every frame-based score is defined at this short side (motion in px/frame at 256)
TEXTURE = 10.0  # smoothed Sobel gradient magnitude of luma above which a pixel's motion can be seen


def decode_size(width: int, height: int, short: int = SHORT_SIDE, upscale: bool = True) -> tuple[int, int]:
    """(w, h) with the short side at `short` and the aspect kept (long side rounded to even). With
    `upscale=False` a source whose short side is under `short` keeps its own (the size to decode it at)."""
    if not upscale:
        short = min(short, max(1, min(int(width), int(height))))
    s = short / max(1, min(int(width), int(height)))
    w, h = int(width) * s, int(height) * s
    return (short, max(2, int(round(h / 2)) * 2)) if width <= height else (max(2, int(round(w / 2)) * 2), short)


def luma(images: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) RGB uint8 -> (T, H, W) uint8 luma (BT.601 weights, as OpenCV's RGB2GRAY)."""
    import cv2

    if not len(images):
        return np.zeros(images.shape[:3], np.uint8)
    return np.stack([cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY) for im in images])


def fit(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) uint8 frames resized to `size` (w, h) (bilinear, as the decoder's scaler): small sources'
    frames scaled up to the 256-pixel short side every frame-based score but `sharpness` is defined at."""
    import cv2

    if not len(images) or images.shape[2:0:-1] == tuple(size):
        return images
    return np.stack([cv2.resize(np.ascontiguousarray(im), tuple(size), interpolation=cv2.INTER_LINEAR)
                     for im in images])


def textured(gray: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with enough local contrast for their motion to be observable. Flow in flat areas
    (sky, a white road, a wall) is a guess: DIS fills it in from the neighbours, so one bike crossing a white
    road would move the whole road."""
    import cv2

    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1)
    return cv2.GaussianBlur(cv2.magnitude(gx, gy), (0, 0), 2.0) > TEXTURE


def spread(n: int, k: int) -> list[int]:
    """`k` positions spread evenly over range(n), first and last included (all of them when n <= k)."""
    if n <= k:
        return list(range(n))
    if k == 1:
        return [n // 2]
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)})


@dataclass
class ClipFrames:
    """One clip's sampled frames and what the decode pass measured besides them."""

    clip: dict  # the manifest row (clip_id, video_path, start_frame, ..., caption when present)
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB at SHORT_SIDE, sampled at --sample-fps, in time order
    indices: np.ndarray  # (T,) their decoded-frame indices in the source
    after: np.ndarray  # (P, H, W, 3) uint8: the frame right after frames[pair_of[j]]
    pair_of: np.ndarray  # (P,) positions in `frames`
    bits: tuple[float, int] | None = None  # (compressed bits, frames they cover) over the clip's range
    coded_pixels: int = 0  # coded width x height of the stream
    flow_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    detail: np.ndarray | None = field(default=None, repr=False)  # (T, h, w, 3) `frames` as decoded, where
    # the source's short side is under SHORT_SIDE and `frames` are them scaled up; None: `frames` are decoded

    @cached_property
    def detail_luma(self) -> np.ndarray:
        """(T, h, w) uint8 luma at min(source, SHORT_SIDE) short side: never scaled up, for blur measures."""
        return self.luma if self.detail is None else luma(self.detail)

    @cached_property
    def luma(self) -> np.ndarray:
        """(T, H, W) uint8."""
        return luma(self.frames)

    @cached_property
    def flows(self) -> np.ndarray:
        """(P, H, W, 2) float32 optical flow from each sampled frame to the next frame, in pixels at SHORT_SIDE.
        +x: content moves right, +y: content moves down."""
        if self.flow_fn is None:
            raise RuntimeError("this ClipFrames was made without a flow estimator")
        if not len(self.pair_of):
            return np.zeros((0, *self.frames.shape[1:3], 2), np.float32)
        return self.flow_fn(self.luma[self.pair_of], luma(self.after))

    @cached_property
    def flow_mask(self) -> np.ndarray:
        """(P, H, W) bool: where each pair's flow is observable (`textured` in its first frame)."""
        return np.stack([textured(g) for g in self.luma[self.pair_of]]) if len(self.pair_of) else \
            np.zeros((0, *self.frames.shape[1:3]), bool)

    def key_frames(self, k: int = 3) -> np.ndarray:
        """First, middle and last sampled frames (k = 3), as model-based scorers read them."""
        return self.frames[spread(len(self.frames), k)]


class Scorer(abc.ABC):
    """One score (or a few that come from the same computation). Subclasses set `name` and `columns` and
    implement `score`; model-based scorers also set `model` and load weights in `load` (once per worker)."""

    name = ""  # the --scorers name
    columns: dict[str, str] = {}  # column -> dtype ("float", "bool", "string"), as in index.record.STAGE_COLUMNS
    needs_flow = False  # reads ClipFrames.flows
    needs_bits = False  # reads ClipFrames.bits (one demux pass per source)
    uses_gpu = False

    def load(self) -> "Scorer":
        """Load weights; called once in each worker (never in the driver of a Ray or multi-process run)."""
        return self

    def check(self) -> None:
        """Driver, before any work: raise a `ModelError` (one line) when the model cannot be loaded."""

    def describe(self) -> dict[str, Any]:
        """What the scores depend on besides the frames (model ids): recorded with the run's parts."""
        return {}

    @abc.abstractmethod
    def score(self, clip: ClipFrames) -> dict:
        """{column: value} for one clip; NaN (or None) where the clip has nothing to measure."""

    def score_batch(self, clips: list[ClipFrames]) -> list[dict]:
        """Scores of several clips of one source; model-based scorers batch their forward passes here."""
        return [self.score(c) for c in clips]
