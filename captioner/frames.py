"""Frame sampling policy: which frames of each clip the model sees, decoded once per source video.

All clips of one source are served by one sequential decode (`index.video.iter_many`), resized inside the
decoder to the size the backend wants, and handed on as soon as the decode has passed them. Uniform
`num_frames` per clip, or a fixed `sample_fps` (capped at `max_frames`); the backend rounds the count to
what the model accepts (Qwen: whole temporal patches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from index.video import iter_many, sample_indices


@dataclass(frozen=True)
class FramePolicy:
    num_frames: int = 8
    sample_fps: float | None = None
    max_frames: int = 32

    def __post_init__(self):
        if self.sample_fps is not None and not (math.isfinite(self.sample_fps) and self.sample_fps > 0):
            raise ValueError(f"--sample-fps must be a positive number, got {self.sample_fps}")
        if self.num_frames < 1:
            raise ValueError("--num-frames must be at least 1")
        if self.max_frames < 1:
            raise ValueError("--max-frames must be at least 1")

    def indices(self, row: dict, frame_count=lambda n: n) -> list[int]:
        """Absolute decoded-frame indices for one manifest row."""
        start, end = int(row["start_frame"]), int(row["end_frame"])
        if self.sample_fps:
            idx = sample_indices(start, end, fps=self.sample_fps, video_fps=float(row["fps"]))
            want = frame_count(min(len(idx), self.max_frames))
            if want == len(idx):
                return idx
        else:
            want = frame_count(min(self.num_frames, self.max_frames))
        return sample_indices(start, end, num=want)


def frame_times(row: dict, indices: list[int]) -> list[float]:
    """Seconds in the source for each sampled frame (the clip's PTS start plus the offset at its fps)."""
    fps = float(row["fps"]) or 25.0
    return [round(float(row["start_sec"]) + (i - int(row["start_frame"])) / fps, 3) for i in indices]


def iter_clip_frames(video_path: str, rows: list[dict], policy: FramePolicy, frame_size=None,
                     frame_count=lambda n: n) -> Iterator[tuple[str, tuple[np.ndarray, list[int]]]]:
    """(clip_id, (frames (T, H, W, 3) uint8, absolute indices)) for each clip as soon as one sequential decode
    of the source has passed it. A clip whose frames lie past the end of the video is not yielded."""
    if not rows:
        return
    wanted = {r["clip_id"]: policy.indices(r, frame_count) for r in rows}
    size = frame_size(int(rows[0]["width"]), int(rows[0]["height"])) if frame_size else None
    for cid, arr in iter_many(video_path, wanted, size=size):
        yield cid, (arr, wanted[cid])


def load_clip_frames(video_path: str, rows: list[dict], policy: FramePolicy, frame_size=None,
                     frame_count=lambda n: n) -> dict[str, tuple[np.ndarray, list[int]]]:
    """`iter_clip_frames` gathered into {clip_id: (frames, indices)}: every clip of the source in memory."""
    return dict(iter_clip_frames(video_path, rows, policy, frame_size, frame_count))
