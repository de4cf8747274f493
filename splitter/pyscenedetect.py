"""PySceneDetect's detectors fed from shotcap's one decode, through the library's detector API.

One class serves every library detector; the registry (splitter/detectors.py) names them:

| name        | library detector    | what it compares                                                   |
|-------------|---------------------|--------------------------------------------------------------------|
| `adaptive`  | `AdaptiveDetector`  | ContentDetector scores against their rolling average (recommended) |
| `content`   | `ContentDetector`   | HSV (and optionally edge) difference between consecutive frames    |
| `histogram` | `HistogramDetector` | YUV histogram correlation between consecutive frames               |
| `hash`      | `HashDetector`      | perceptual hash distance between consecutive frames                |

The library's `SceneManager` would open the file again with its own `VideoStream`; instead each
frame of `index.video.iter_frames` (decoded straight to the size `SceneManager` would downscale to)
goes to the detector's `process_frame`, then `post_process`. Every cut the library reports is a hard
cut: PySceneDetect has no notion of transition frames. Options other than `min_shot_frames` go to the
library detector's constructor (its own `min_scene_len`, default 15 frames, applies too).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .base import MIN_SHOT_FRAMES, ShotDetector

MIN_WIDTH = 256  # scenedetect.scene_manager.DEFAULT_MIN_WIDTH: its automatic downscale target
LIBRARY = {"adaptive": "AdaptiveDetector", "content": "ContentDetector", "histogram": "HistogramDetector",
           "hash": "HashDetector"}


class PySceneDetect(ShotDetector):
    """`PySceneDetect("content", threshold=30)`: the library detector named in `LIBRARY`."""

    def __init__(self, name: str, /, min_shot_frames: int = MIN_SHOT_FRAMES, **options):
        super().__init__(min_shot_frames)
        if name not in LIBRARY:
            raise ValueError(f"no PySceneDetect detector {name!r}; choose one of: {', '.join(LIBRARY)}")
        self.name = name
        self.options = options
        self.library_detector()  # fail on bad options now, not inside a worker

    def library_detector(self):
        import scenedetect.detectors

        return getattr(scenedetect.detectors, LIBRARY[self.name])(**self.options)

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
