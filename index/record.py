"""The data contract: one `Clip` is one row of the manifest.

Every stage reads and writes manifests of these rows. Stages add columns (caption, scores, dup_group, ...);
no stage rewrites another stage's columns.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from fractions import Fraction

SCHEMA_VERSION = 1


@dataclass
class Clip:
    clip_id: str  # stable: hash of the source's content hash and the frame range
    video_path: str
    video_sha256: str
    start_sec: float  # PTS-based, seconds from the first decoded frame
    end_sec: float  # PTS of the first frame after the clip (or the end of the last frame)
    start_frame: int  # decoded-frame index, inclusive
    end_frame: int  # decoded-frame index, exclusive
    fps: float
    width: int  # display size: after rotation and sample aspect ratio
    height: int
    num_frames: int
    aspect_ratio: float  # height / width, as Open-Sora records it: 0.5625 for a 16:9 (w:h) frame

    @classmethod
    def from_range(cls, video_path: str, video_sha256: str, start_frame: int, end_frame: int,
                   start_sec: float, end_sec: float, fps: float, width: int, height: int) -> "Clip":
        return cls(
            clip_id=make_clip_id(video_sha256, start_frame, end_frame),
            video_path=str(video_path), video_sha256=video_sha256,
            start_sec=round(float(start_sec), 6), end_sec=round(float(end_sec), 6),
            start_frame=int(start_frame), end_frame=int(end_frame), fps=float(fps),
            width=int(width), height=int(height), num_frames=int(end_frame - start_frame),
            aspect_ratio=round(height / width, 6) if width else 0.0,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CORE_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Clip))

# Columns later stages add, with their dtype; used to validate hand-edited manifests.
STAGE_COLUMNS: dict[str, str] = {
    "clip_path": "string",  # a physically cut clip (split-videos --cut)
    "caption": "string",
    "captions": "list",  # import-clips: every caption a dataset gives the clip (`caption` holds the one picked)
    "caption_model": "string",
    "prompt_id": "string",
    "caption_tokens": "int",
    "caption_flags": "string",  # comma-separated failed checks after one retry; "" when the caption passed
    "caption_retries": "int",
    "frame_times": "list",
    "motion": "float",  # score-clips: mean optical flow, px/frame at a 256-pixel short side
    "motion_max": "float",
    "camera_motion": "string",  # static, pan_left, pan_right, tilt_up, tilt_down, zoom_in, zoom_out, shaky, mixed
    "sharpness": "float",  # variance of the Laplacian of luma at a 256-pixel short side
    "brightness": "float",  # median mean luma, 0-255
    "black_frac": "float",  # fraction of sampled frames that are near black
    "text_area": "float",  # median fraction of the frame covered by text boxes
    "text_static": "bool",  # text stays in place (subtitles, logos, watermarks)
    "bpp": "float",  # bits per pixel of the source stream over the clip
    "aesthetic": "float",  # LAION improved aesthetic predictor, 1-10
    "text_match": "float",  # caption-frames cosine similarity (CLIP/SigLIP)
    "nsfw": "float",  # probability, 0-1
    "dup_group": "int",
    "keep": "bool",
}


def make_clip_id(video_sha256: str, start_frame: int, end_frame: int) -> str:
    """A clip id that survives renames and re-runs: content hash + frame range."""
    h = hashlib.sha256(f"{video_sha256}:{int(start_frame)}:{int(end_frame)}".encode())
    return h.hexdigest()[:20]


def simplify_ratio(width: int, height: int) -> str:
    """'16:9' style label for a display size (used in data cards and buckets)."""
    if not width or not height:
        return "0:0"
    r = Fraction(int(width), int(height)).limit_denominator(32)
    return f"{r.numerator}:{r.denominator}"
