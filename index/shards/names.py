"""Names for what a clip is: its aspect ratio (w:h), resolution class, shard bucket and file key.

One convention everywhere. The manifest's `aspect_ratio` column is height / width, as Open-Sora records it
(0.5625 for a 16:9 frame). Names are written width:height, the way people say them, snapped to the nearest
standard ratio: `16:9`, `4:3`, `21:9`, `9:16`... In shard names the colon is an `x` (`16x9`), since a colon
does not belong in a file name.

A resolution class is the largest standard line count the clip's short side reaches (`576p` for 576 lines,
`480p` for 544 lines): a name never promises more lines than the clip has. Clips under 144 lines are
`under144p`.
"""

from __future__ import annotations

import hashlib
import math
import re

# w:h name -> width / height
ASPECTS = {"21:9": 21 / 9, "16:9": 16 / 9, "3:2": 3 / 2, "4:3": 4 / 3, "1:1": 1.0, "3:4": 3 / 4, "2:3": 2 / 3,
           "9:16": 9 / 16, "9:21": 9 / 21}
LINES = (144, 240, 360, 480, 576, 720, 1080, 1440, 2160, 4320)
FRAME_BUCKETS = (16, 32, 64, 128, 256, 512)


def aspect_name(width: int, height: int) -> str:
    """'16:9' for 1920x1080: the standard w:h ratio nearest (in log scale) to width / height."""
    ratio = float(width) / float(height) if width and height else 1.0
    return min(ASPECTS, key=lambda k: abs(math.log(ASPECTS[k]) - math.log(ratio)))


def resolution_name(width: int, height: int) -> str:
    short = min(int(width), int(height))
    fit = [n for n in LINES if n <= short]
    return f"{fit[-1]}p" if fit else f"under{LINES[0]}p"


def bucket_of(width: int, height: int, num_frames: int) -> str:
    """'1080p_16x9_f065-128': resolution class, aspect ratio (w x h), frame-count range."""
    head = f"{resolution_name(width, height)}_{aspect_name(width, height).replace(':', 'x')}"
    lo = 1
    for hi in FRAME_BUCKETS:
        if num_frames <= hi:
            return f"{head}_f{lo:03d}-{hi:03d}"
        lo = hi + 1
    return f"{head}_f{lo:03d}+"


def safe_key(clip_id) -> str:
    """A file stem and WebDataset key: ASCII letters, digits, '_' and '-' only (no dots: they split members)."""
    text = str(clip_id)
    if re.fullmatch(r"[A-Za-z0-9_-]{1,80}", text):
        return text
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", text)[:60].strip("_") or "clip"
    return f"{clean}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def parse_size(text) -> int:
    """'1GB', '500MB', '64KiB', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?i?b?)\s*", str(text).lower())
    if not m:
        raise ValueError(f"bad size {text!r} (e.g. 1GB, 500MB)")
    unit = m.group(2).rstrip("b").rstrip("i")
    try:
        size = int(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[unit])
    except ValueError:  # '1.2.3MB'
        raise ValueError(f"bad size {text!r} (e.g. 1GB, 500MB)") from None
    if size < 1:
        raise ValueError(f"size {text!r} must be at least one byte")
    return size
