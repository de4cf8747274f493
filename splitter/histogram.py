"""PySceneDetect's HistogramDetector: YUV histogram correlation between consecutive frames."""

from __future__ import annotations

from .pyscenedetect import SceneDetectBase


class HistogramDetector(SceneDetectBase):
    name = "histogram"

    def library_detector(self):
        from scenedetect.detectors import HistogramDetector as Library

        return Library(**self.options)
