"""The backend interface: requests in (each carrying its clip's id), outputs out, matched by that id.

A backend owns a loaded model. It says what frame size and frame count it wants (so frames are resized once,
in the decoder) and turns a list of `Request`s into a dict {request_id: Output}. Batching, padding and any
reordering are its business; the caller never relies on output order.
"""

from __future__ import annotations

import abc
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from index.engine import BadInput

from ..models import ModelSpec

QWEN_VIDEO_MAX_PIXELS = 360 * 420  # per frame; Qwen's own suggestion for video captioning


def qwen_frame_size(width: int, height: int, factor: int = 28, max_pixels: int | None = None,
                    min_pixels: int | None = None) -> tuple[int, int]:
    """(w, h) by the Qwen-VL processors' rule (transformers' `smart_resize`, which vLLM uses too): multiples of
    `factor`, pixel count inside [min, max], aspect kept, never under `factor` on a side (qwen-vl-utils' copy
    rounds the thin side of a long strip down to 0). A frame longer than 200 times its width is bad input,
    as the models refuse it."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    if max(width, height) > 200 * min(width, height):
        raise BadInput(f"{width}x{height} frames: an aspect ratio beyond the 200:1 that Qwen-VL models accept")
    hi = max_pixels or QWEN_VIDEO_MAX_PIXELS
    lo = min(min_pixels or factor * factor * 4, hi)
    h, w = smart_resize(int(height), int(width), factor=factor, min_pixels=lo, max_pixels=hi)
    for _ in range(8):  # the processor applies the rule again to our frames: a side held at `factor` can leave
        again = smart_resize(h, w, factor=factor, min_pixels=lo, max_pixels=hi)  # the area over the maximum
        if again == (h, w):
            break
        h, w = again
    return int(w), int(h)


@dataclass
class Request:
    request_id: str  # the clip_id (or clip_id#k for per-frame requests)
    prompt: str  # the rendered user text
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8 RGB; None: a text-only request
    frame_indices: list[int] = field(default_factory=list)  # relative to the clip's first frame
    fps: float = 0.0  # the source's frame rate
    clip_frames: int = 0  # frames in the whole clip
    as_image: bool = False  # send frames[0] as one image instead of a video


@dataclass
class Output:
    request_id: str
    text: str
    num_tokens: int  # generated tokens, without padding and the end-of-turn token
    hit_limit: bool  # stopped by max_new_tokens rather than by the model


@dataclass
class GenerateOptions:
    max_new_tokens: int = 256
    retry: bool = False  # second attempt after a failed check: discourage loops, allow more tokens

    def effective_max_tokens(self) -> int:
        return int(self.max_new_tokens * 1.5) if self.retry else self.max_new_tokens


class Backend(abc.ABC):
    """Base class: subclasses implement `load` and `_generate`."""

    name = "base"

    def __init__(self, spec: ModelSpec, batch_size: int = 8, device: str | None = None,
                 trust_remote_code: bool = False, max_pixels: int | None = None):
        self.spec = spec
        self.batch_size = max(1, int(batch_size))
        self.device = device
        self.trust_remote_code = trust_remote_code
        self.max_pixels = max_pixels
        self.stats = defaultdict(float)  # preprocess_s, generate_s, output_tokens, requests

    # ------------------------------------------------------------ what the model wants
    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        """Decode size (w, h) for a source of the given display size."""
        scale = min(1.0, 448 / max(width, height))
        return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)

    def frame_count(self, n: int) -> int:
        """Frames per clip the model accepts, given the number asked for."""
        return max(1, int(n))

    # ------------------------------------------------------------ generation
    def generate(self, requests: list[Request], options: GenerateOptions) -> dict[str, Output]:
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request ids must be unique within one call")
        t = time.perf_counter()
        out = self._generate(requests, options)
        self.stats["backend_s"] += time.perf_counter() - t
        missing = [i for i in ids if i not in out]
        if missing:
            raise RuntimeError(f"{self.name} backend returned no output for request {missing[0]}")
        self.stats["requests"] += len(requests)
        self.stats["output_tokens"] += sum(o.num_tokens for o in out.values())
        return out

    @abc.abstractmethod
    def load(self) -> "Backend":
        """Load the model (once per worker) and return self."""

    @abc.abstractmethod
    def _generate(self, requests: list[Request], options: GenerateOptions) -> dict[str, Output]:
        """{request_id: Output} for every request, in any order."""

    def close(self) -> None:
        pass
