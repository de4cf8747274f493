"""Shot detection and clip policy: raw videos -> frame-accurate clips in `clips.parquet`.

    from splitter import detect_shots, split_videos
    shots = detect_shots("movie.mp4")                  # TransNetV2, one decode
    df, failures = split_videos("raw/", "out/")        # what `split-videos` runs
"""

from .base import Shot, ShotDetector
from .detectors import DEFAULT_DETECTOR, DETECTORS, detect_shots, make_detector
from .pipeline import split_videos
from .policy import ClipPolicy, shots_to_clips

__all__ = ["DEFAULT_DETECTOR", "DETECTORS", "ClipPolicy", "Shot", "ShotDetector", "detect_shots",
           "make_detector", "shots_to_clips", "split_videos"]
