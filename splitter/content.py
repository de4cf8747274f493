"""PySceneDetect's ContentDetector: HSV (and optionally edge) difference between consecutive frames."""

from __future__ import annotations

from .pyscenedetect import SceneDetectBase


class ContentDetector(SceneDetectBase):
    name = "content"

    def library_detector(self):
        from scenedetect.detectors import ContentDetector as Library

        return Library(**self.options)
