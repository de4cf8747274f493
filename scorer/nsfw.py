"""`nsfw` (opt-in; 0-1, higher is less safe): probability from an image classifier, max over the first, middle
and last sampled frames (one explicit frame is enough to drop a clip).

Any transformers image-classification checkpoint whose labels name the unsafe classes (NSFW_LABELS, case
aside; their probabilities are summed), by `--nsfw-model` (a folder or hub id; default
Falconsai/nsfw_image_detection, labels normal/nsfw). It never runs unless asked for: `--scorers ...,nsfw`,
`--scorers all` or `--nsfw-model`. A usual cut: nsfw < 0.5.
"""

from __future__ import annotations

import math

import numpy as np

from .base import ClipFrames, Scorer
from .models import ModelError, check_model, load_pretrained, pick_device

DEFAULT_MODEL = "Falconsai/nsfw_image_detection"
NSFW_LABELS = ("nsfw", "porn", "hentai", "sexy", "explicit", "unsafe", "nude", "nudity")


def unsafe_ids(id2label: dict) -> list[int]:
    return sorted(int(i) for i, name in id2label.items() if str(name).strip().lower() in NSFW_LABELS)


class NsfwScorer(Scorer):
    name = "nsfw"
    columns = {"nsfw": "float"}
    uses_gpu = True

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, frames: int = 3,
                 batch_size: int = 32):
        self.model_id, self.device, self.frames, self.batch_size = str(model), device, int(frames), int(batch_size)
        self._loaded = None

    def check(self) -> None:
        from transformers import AutoConfig

        check_model(self.model_id)
        labels = getattr(load_pretrained(AutoConfig, self.model_id), "id2label", {}) or {}
        if not unsafe_ids(labels):
            raise ModelError(f"{self.model_id}: none of its labels ({', '.join(map(str, labels.values()))}) "
                             f"is an unsafe class ({', '.join(NSFW_LABELS)})")

    def describe(self) -> dict:
        return {"nsfw_model": self.model_id}

    def load(self) -> "NsfwScorer":
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        device = pick_device(self.device)
        processor = load_pretrained(AutoImageProcessor, self.model_id)
        model = load_pretrained(AutoModelForImageClassification, self.model_id).to(device).eval()
        ids = unsafe_ids(model.config.id2label)
        if not ids:
            raise ModelError(f"{self.model_id}: no unsafe class among its labels")
        self._loaded = (model, processor, ids, device)
        return self

    def score(self, clip: ClipFrames) -> dict:
        return self.score_batch([clip])[0]

    def score_batch(self, clips: list[ClipFrames]) -> list[dict]:
        import torch

        if self._loaded is None:
            self.load()
        model, processor, ids, device = self._loaded
        frames = [c.key_frames(self.frames) for c in clips]
        flat = [f for fs in frames for f in fs]
        probs = []
        with torch.inference_mode():
            for i in range(0, len(flat), self.batch_size):
                pixels = processor(images=flat[i:i + self.batch_size], return_tensors="pt")["pixel_values"]
                logits = model(pixel_values=pixels.to(device)).logits.float()
                probs.append(logits.softmax(-1)[:, ids].sum(-1).cpu())
        p = torch.cat(probs).numpy() if probs else np.zeros(0)
        bounds = np.cumsum([0] + [len(f) for f in frames])
        return [{"nsfw": float(p[a:b].max()) if b > a else math.nan} for a, b in zip(bounds[:-1], bounds[1:])]

    def __getstate__(self):
        return {**self.__dict__, "_loaded": None}
