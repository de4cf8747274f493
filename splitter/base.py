"""The shot, the detector base class and the one decode every detector shares.

A detector looks at the frames of one sequential decode (at the size it asks for) and returns
transition spans: `(a, b)` means frames `a .. b-1` belong to no shot. A hard cut at frame `k`
is the empty span `(k, k)`: one shot ends at `k` (exclusive) and the next starts at `k`.

Shots shorter than `min_shot_frames` (every detector's option, default `MIN_SHOT_FRAMES`) are merged into
the shot they touch at a hard cut, the next one first, as PySceneDetect's `min_scene_len` drops a cut
that comes too soon: a video that opens on one black frame has no one-frame shot and no cut at 0.04 s.
A short shot that touches none (between two gradual transitions, or the whole video) stays as it is.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from index.video import VideoError, iter_frames, probe

MIN_SHOT_FRAMES = 4  # shots of 1 to 3 frames (0.12 s at 25 fps) are detector noise, not shots


@dataclass(frozen=True)
class Shot:
    start_sec: float  # PTS-based, from the first decoded frame
    end_sec: float  # PTS of the first frame after the shot (or the end of the last frame)
    start_frame: int  # decoded-frame index, inclusive
    end_frame: int  # decoded-frame index, exclusive

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame


@dataclass
class Decoded:
    """What one decode of a file leaves behind for the clip policy: per-frame times and the probe."""
    pts: np.ndarray  # seconds from the first decoded frame, one per frame
    fps: float
    width: int  # display size
    height: int
    codec: str = ""

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def end_time(self, frame: int) -> float:
        """Start time of `frame`, or the end of the last frame when `frame` is one past the end."""
        if frame < len(self.pts):
            return float(self.pts[frame])
        step = 1.0 / self.fps if self.fps > 0 else 0.04
        return float(self.pts[-1] + step) if len(self.pts) else 0.0


class ShotDetector(abc.ABC):
    """One shot detector. Subclasses implement `transitions`; `decode_size` picks the frame size."""

    name = ""

    def __init__(self, min_shot_frames: int = MIN_SHOT_FRAMES):
        if int(min_shot_frames) < 1:
            raise ValueError(f"min_shot_frames must be >= 1, not {min_shot_frames}")
        self.min_shot_frames = int(min_shot_frames)

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The (w, h) the detector wants frames at; None for the display size."""
        return None

    @abc.abstractmethod
    def transitions(self, frames: Iterator[np.ndarray], fps: float) -> list[tuple[int, int]]:
        """Consume RGB uint8 frames in decode order; return transition spans `(a, b)`, sorted."""

    # ------------------------------------------------------------ shared driver

    def detect(self, path) -> tuple[list[Shot], Decoded]:
        """Decode `path` once and return its shots and per-frame times."""
        info = probe(path)
        pts: list[float] = []

        def images() -> Iterator[np.ndarray]:
            for fr in iter_frames(path, size=self.decode_size(info.width, info.height)):
                pts.append(fr.pts_sec)
                yield fr.image

        spans = self.transitions(images(), info.fps)
        if not pts:
            raise VideoError("no decodable video frames")
        times = np.asarray(pts, np.float64)
        fps = info.fps
        if len(times) > 1:  # the container's rate is nominal; a VFR file's true average comes from PTS
            measured = (len(times) - 1) / max(times[-1] - times[0], 1e-6)
            if fps <= 0 or abs(measured - fps) > 0.005 * fps:
                fps = round(measured, 6)
        decoded = Decoded(pts=times, fps=float(fps), width=info.width, height=info.height, codec=info.codec)
        return spans_to_shots(spans, decoded, self.min_shot_frames), decoded


def spans_to_shots(spans: Iterable[tuple[int, int]], decoded: Decoded, min_frames: int = 1) -> list[Shot]:
    """Shots between transition spans; spans are clipped to the video and merged when they overlap.
    Shots shorter than `min_frames` join a neighbour (see the module docstring)."""
    n = decoded.num_frames
    shots, start = [], 0
    for a, b in sorted((max(0, int(a)), min(n, int(b))) for a, b in spans):
        b = max(a, b)
        if a > start:
            shots.append((start, a))
        start = max(start, b)
    if start < n:
        shots.append((start, n))
    shots = merge_short(shots, min_frames)
    return [Shot(round(decoded.end_time(a), 6), round(decoded.end_time(b), 6), a, b) for a, b in shots if b > a]


def merge_short(shots: list[tuple[int, int]], min_frames: int) -> list[tuple[int, int]]:
    """Sorted [a, b) shots with every shot shorter than `min_frames` joined to the next shot it touches,
    else to the previous one it touches; a short shot that touches neither stays."""
    out: list[tuple[int, int]] = []
    short = None  # a short shot waiting for the next one
    for a, b in shots:
        if short is not None:
            if short[1] == a:
                a = short[0]
            elif out and out[-1][1] == short[0]:
                out[-1] = (out[-1][0], short[1])
            else:
                out.append(short)
            short = None
        if b - a < min_frames:
            short = (a, b)
        else:
            out.append((a, b))
    if short is not None:
        if out and out[-1][1] == short[0]:
            out[-1] = (out[-1][0], short[1])
        else:
            out.append(short)
    return out
