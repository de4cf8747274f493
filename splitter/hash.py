"""PySceneDetect's HashDetector: perceptual hash distance between consecutive frames."""

from __future__ import annotations

from .pyscenedetect import SceneDetectBase


class HashDetector(SceneDetectBase):
    name = "hash"

    def library_detector(self):
        from scenedetect.detectors import HashDetector as Library

        return Library(**self.options)
