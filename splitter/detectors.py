"""The detector registry and `detect_shots`, the splitter's public entry point for one file."""

from __future__ import annotations

from functools import partial
from typing import Callable

from .base import Decoded, Shot, ShotDetector
from .pyscenedetect import LIBRARY, PySceneDetect


def _transnetv2(**options) -> ShotDetector:
    from .transnetv2 import TransNetV2Detector  # torch is imported when TransNetV2 is asked for, not before

    return TransNetV2Detector(**options)


# name -> constructor taking the detector's options (every one takes `min_shot_frames`, see base.py)
DETECTORS: dict[str, Callable[..., ShotDetector]] = {
    "transnetv2": _transnetv2,
    **{name: partial(PySceneDetect, name) for name in LIBRARY},  # adaptive, content, histogram, hash
}
DEFAULT_DETECTOR = "transnetv2"

_cache: dict[tuple, ShotDetector] = {}


def make_detector(name: str = DEFAULT_DETECTOR, **options) -> ShotDetector:
    """A detector by name; one instance per (name, options) per process (TransNetV2 loads once)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of: {', '.join(DETECTORS)}")
    key = (name, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _cache:
        try:
            _cache[key] = DETECTORS[name](**options)
        except TypeError as e:
            raise ValueError(f"bad options for detector {name!r}: {e}") from None
    return _cache[key]


def detect_shots_decoded(path, detector: str | ShotDetector = DEFAULT_DETECTOR,
                         **options) -> tuple[list[Shot], Decoded]:
    det = detector if isinstance(detector, ShotDetector) else make_detector(detector, **options)
    return det.detect(path)


def detect_shots(path, detector: str | ShotDetector = DEFAULT_DETECTOR, **options) -> list[Shot]:
    """Shots of one video, from one sequential decode. Consecutive shots touch at a hard cut and
    leave a gap (the transition frames) at a fade or dissolve. Raises `index.VideoError` for bad input."""
    return detect_shots_decoded(path, detector, **options)[0]
