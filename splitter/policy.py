"""Clip policy: shots -> manifest rows.

Per shot: trim `trim_frames` at each edge (a detector that is one frame late leaves no flash of the
neighbouring shot), drop what is shorter than `min_sec`, and cut what is longer than `max_sec` into
the fewest near-equal chunks (by PTS, so VFR files chunk by time) that each fit (or, when no chunks fit
both limits, centred windows of `max_sec`: see `chunk`). Transition frames never reach a clip: they lie
between shots already. When no clip comes out, `explain_no_clips` gives the one-line reason.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from index.record import Clip

from .base import Decoded, Shot


@dataclass(frozen=True)
class ClipPolicy:
    min_sec: float = 2.0
    max_sec: float = 20.0  # 0 or None: no upper limit
    trim_frames: int = 1

    def __post_init__(self):
        if not (math.isfinite(self.min_sec) and self.min_sec >= 0):
            raise ValueError(f"--min-sec must be a number >= 0, got {self.min_sec}")
        if self.max_sec is not None and not (math.isfinite(self.max_sec) and self.max_sec >= 0):
            raise ValueError(f"--max-sec must be a number >= 0 (0: no limit), got {self.max_sec}")
        if self.max_sec and self.max_sec < self.min_sec:
            raise ValueError(f"--max-sec ({self.max_sec}) must be >= --min-sec ({self.min_sec})")
        if self.trim_frames < 0:
            raise ValueError(f"--trim-frames must be >= 0, got {self.trim_frames}")

    def to_dict(self) -> dict:
        return asdict(self)


def chunk(start: int, end: int, decoded: Decoded, max_sec: float | None,
          min_sec: float = 0.0) -> list[tuple[int, int]]:
    """[start, end) split into the fewest near-equal (in time) pieces no longer than max_sec.

    When no such split has pieces of at least min_sec (max_sec < 2 * min_sec and a shot between them,
    say 3.5 s for 2..3 s), the shot is split into as many min_sec-long slots as fit and each slot keeps a
    max_sec window at its centre: some frames are left out rather than the whole shot."""
    t0, t1 = decoded.end_time(start), decoded.end_time(end)
    dur = t1 - t0
    if not max_sec or dur <= max_sec + 1e-9:
        return [(start, end)]
    k = max(2, math.ceil(dur / max_sec - 1e-9))
    if min_sec and dur / k < min_sec - 1e-9:
        slots = _near_equal(start, end, decoded, max(1, math.floor(dur / min_sec + 1e-9)))
        return [_centre(a, b, decoded, max_sec) for a, b in slots]
    while k <= end - start:
        pieces = _near_equal(start, end, decoded, k)
        if all(decoded.end_time(b) - decoded.end_time(a) <= max_sec + 1e-6 for a, b in pieces):
            return pieces
        k += 1
    return [(f, f + 1) for f in range(start, end)]  # pathological timestamps: one frame each


def _near_equal(start: int, end: int, decoded: Decoded, k: int) -> list[tuple[int, int]]:
    """[start, end) cut into k pieces of near-equal duration (by PTS), each at least one frame."""
    t0 = decoded.end_time(start)
    dur = decoded.end_time(end) - t0
    cuts = [start]
    for j in range(1, k):
        f = int(np.searchsorted(decoded.pts, t0 + j * dur / k, side="left"))
        cuts.append(min(max(f, cuts[-1] + 1), end - (k - j)))
    cuts.append(end)
    return list(zip(cuts[:-1], cuts[1:]))


def _centre(a: int, b: int, decoded: Decoded, max_sec: float) -> tuple[int, int]:
    """The longest run of [a, b) centred in time whose duration is at most max_sec."""
    ta, tb = decoded.end_time(a), decoded.end_time(b)
    if tb - ta <= max_sec + 1e-6:
        return a, b
    s = max(a, int(np.searchsorted(decoded.pts, (ta + tb - max_sec) / 2 - 1e-6, side="left")))
    e = int(np.searchsorted(decoded.pts, decoded.end_time(s) + max_sec + 1e-6, side="right")) - 1
    return s, min(max(e, s + 1), b)


def shots_to_clips(shots: list[Shot], decoded: Decoded, video_path: str, video_sha256: str,
                   policy: ClipPolicy = ClipPolicy()) -> list[Clip]:
    clips: list[Clip] = []
    for shot in shots:
        a, b = shot.start_frame + policy.trim_frames, shot.end_frame - policy.trim_frames
        if b <= a:
            continue
        for s, e in chunk(a, b, decoded, policy.max_sec, policy.min_sec):
            t0, t1 = decoded.end_time(s), decoded.end_time(e)
            if t1 - t0 + 1e-6 < policy.min_sec:
                continue
            clips.append(Clip.from_range(video_path, video_sha256, s, e, t0, t1, decoded.fps,
                                         decoded.width, decoded.height))
    return clips


def explain_no_clips(shots: list[Shot], decoded: Decoded, policy: ClipPolicy = ClipPolicy()) -> str:
    """Why `shots_to_clips` made no clip of these shots, in one line for failed.jsonl, e.g.
    "too short: no clip of at least 2 s (3 shots; longest shot 2.00 s, 1.92 s after trimming 1 frame at
    each edge < --min-sec 2)". The trimming is named only when the longest shot was long enough before it."""
    head = f"too short: no clip of at least {policy.min_sec:g} s"
    if not shots:
        return f"{head} (no shots)"

    def seconds(a: int, b: int) -> float:
        return decoded.end_time(b) - decoded.end_time(a) if b > a else 0.0

    count = f"{len(shots)} shot{'' if len(shots) == 1 else 's'}"
    longest = max(seconds(s.start_frame, s.end_frame) for s in shots)
    t = policy.trim_frames
    trimmed = max(seconds(s.start_frame + t, s.end_frame - t) for s in shots)
    edge = f"trimming {t} frame{'' if t == 1 else 's'} at each edge"
    if t and longest + 1e-6 >= policy.min_sec and trimmed <= 0:
        return f"{head} ({count}; longest shot {longest:.2f} s, nothing left after {edge})"
    if t and longest + 1e-6 >= policy.min_sec and trimmed + 1e-6 < policy.min_sec:
        return (f"{head} ({count}; longest shot {longest:.2f} s, {trimmed:.2f} s after {edge} "
                f"< --min-sec {policy.min_sec:g})")
    return f"{head} ({count}; longest shot {longest:.2f} s)"
