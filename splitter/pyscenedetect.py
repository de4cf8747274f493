"""PySceneDetect detectors fed from shotcap's one decode, through the library's detector API.

The library's `SceneManager` would open the file again with its own `VideoStream`; instead each
frame of `index.video.iter_frames` (decoded straight to the size `SceneManager` would downscale to)
goes to the detector's `process_frame`, then `post_process`. Every cut the library reports is a hard
cut: PySceneDetect has no notion of transition frames.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .base import ShotDetector

MIN_WIDTH = 256  # scenedetect.scene_manager.DEFAULT_MIN_WIDTH: its automatic downscale target


class SceneDetectBase(ShotDetector):
    """Subclasses name the library detector in `library_detector`; options go to its constructor."""

    def __init__(self, **options):
        self.options = options
        self.library_detector()  # fail on bad options now, not inside a worker

    def library_detector(self):
        raise NotImplementedError

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        if width < MIN_WIDTH:
            return None
        factor = width / float(MIN_WIDTH)  # as scenedetect's compute_downscale_factor
        return max(1, round(width / factor)), max(1, round(height / factor))

    def transitions(self, frames: Iterator[np.ndarray], fps: float) -> list[tuple[int, int]]:
        from scenedetect import FrameTimecode

        detector = self.library_detector()
        rate = fps if fps and fps > 0 else 25.0
        cuts: list = []
        last = None
        for i, img in enumerate(frames):
            last = FrameTimecode(i, rate)
            cuts += detector.process_frame(last, np.ascontiguousarray(img[..., ::-1]))  # RGB -> BGR
        if last is not None:
            cuts += detector.post_process(last)
        return sorted({(int(c.frame_num), int(c.frame_num)) for c in cuts})
