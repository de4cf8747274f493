"""PySceneDetect's AdaptiveDetector: rolling average of ContentDetector scores (the library's recommended detector)."""

from __future__ import annotations

from .pyscenedetect import SceneDetectBase


class AdaptiveDetector(SceneDetectBase):
    name = "adaptive"

    def library_detector(self):
        from scenedetect.detectors import AdaptiveDetector as Library

        return Library(**self.options)
