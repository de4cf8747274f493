"""`text_area`: median over analysed frames of the fraction of the frame covered by detected text boxes;
`text_static`: whether text stays in place across the clip (burned-in subtitles, logos, watermarks).

Detection only, with RapidOCR's text detector (PP-OCR DB detector, ONNX; its model ships inside the `rapidocr`
wheel, nothing is downloaded), on up to MAX_FRAMES of the sampled frames at their 256-pixel short side, the
detector's input capped at LIMIT pixels on the long side. RapidOCR's own defaults upscale every frame to a
736-pixel short side first: about 5x the time on a subtitled 320x256 frame, for the same one line found.
A box whose short side exceeds MAX_LINE of the frame's is dropped: the detector reads some colourful
textures as one frame-sized "line" (seen at scores up to 0.9), while overlay text lines are far thinner.

`text_static`: the pixels covered by text in at least STAY of the analysed frames cover at least half the
median text area (a subtitle line whose words change still sits in one band; a sign passing in a pan does
not). Typical cuts: text_area < 0.02 keeps scenes with a little incidental text; text_static == False drops
subtitled and watermarked clips.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .base import ClipFrames, Scorer, spread

MAX_FRAMES = 5
LIMIT = 480  # the detector's input long side, at most
STAY = 0.8
MAX_LINE = 0.3  # a "text line" taller than this share of the frame's short side is texture, not text
MIN_AREA = 0.001  # below this the clip has no text worth a static/moving verdict


class RapidOCRDetector:
    """RapidOCR's text detector alone: RGB uint8 frame -> list of (4, 2) box corners in pixels."""

    def __init__(self, limit: int = LIMIT, threads: int | None = None):
        from rapidocr import RapidOCR

        threads = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or -1
        self.engine = RapidOCR(params={
            "Global.use_cls": False, "Global.use_rec": False, "Global.log_level": "critical",
            "Det.limit_type": "max", "Det.limit_side_len": int(limit),
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        })

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        import cv2

        out = self.engine(np.ascontiguousarray(image[..., ::-1]), use_det=True, use_cls=False, use_rec=False)
        boxes = getattr(out, "boxes", None)
        tallest = MAX_LINE * min(image.shape[:2])
        boxes = [np.asarray(b, np.float32) for b in ([] if boxes is None else boxes)]
        return [b for b in boxes if min(cv2.minAreaRect(b)[1]) <= tallest]


def box_mask(boxes: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixels inside any box."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    if boxes:
        cv2.fillPoly(mask, [np.round(b).astype(np.int32) for b in boxes], 1)
    return mask.astype(bool)


def text_scores(masks: np.ndarray) -> dict:
    """(K, H, W) bool masks of the analysed frames -> text_area, text_static."""
    if not len(masks):
        return {"text_area": math.nan, "text_static": False}
    area = float(np.median(masks.reshape(len(masks), -1).mean(axis=1)))
    stays = masks.mean(axis=0) >= STAY
    return {"text_area": area, "text_static": bool(area >= MIN_AREA and stays.mean() >= 0.5 * area)}


class TextScorer(Scorer):
    name = "text_area"
    columns = {"text_area": "float", "text_static": "bool"}

    def __init__(self, max_frames: int = MAX_FRAMES, limit: int = LIMIT):
        self.max_frames, self.limit = int(max_frames), int(limit)
        self.detector = None

    def load(self) -> "TextScorer":
        self.detector = RapidOCRDetector(self.limit)
        return self

    def describe(self) -> dict:
        return {"text_frames": self.max_frames, "text_limit": self.limit}

    def score(self, clip: ClipFrames) -> dict:
        if self.detector is None:
            self.load()
        frames = clip.frames[spread(len(clip.frames), self.max_frames)]
        masks = np.stack([box_mask(self.detector(f), f.shape[:2]) for f in frames]) if len(frames) else frames
        return text_scores(masks)

    def __getstate__(self):  # the ONNX session is made where it runs
        return {**self.__dict__, "detector": None}
