"""`text_match`: cosine similarity of the caption and the clip's frames in a CLIP or SigLIP embedding space.

The caption's text embedding against the first, middle and last sampled frames' image embeddings (both
L2-normalised), mean of the three cosines; NaN for a clip without a caption. The scale is the model's:
with CLIP ViT-L/14 a matching caption scores about 0.25-0.35 and an unrelated one under 0.15 (Open-Sora's
CLIP-score filter and Data-Juicer's frames-text similarity cut around 0.2); SigLIP's cosines run lower.
Captions longer than the text tower's window are truncated (CLIP: 77 tokens).
"""

from __future__ import annotations

import math

import numpy as np

from .base import ClipFrames, Scorer
from .models import available, check_model, features, image_embeddings, image_text_model, pick_device

DEFAULT_MODEL = "openai/clip-vit-large-patch14"


def caption_of(clip: ClipFrames) -> str | None:
    text = clip.clip.get("caption")
    return text if isinstance(text, str) and text.strip() else None


class TextMatchScorer(Scorer):
    name = "text_match"
    columns = {"text_match": "float"}
    uses_gpu = True

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, frames: int = 3,
                 batch_size: int = 32):
        self.model_id, self.device, self.frames, self.batch_size = str(model), device, int(frames), int(batch_size)
        self._loaded = None

    def available(self) -> bool:
        return available(self.model_id)

    def check(self) -> None:
        check_model(self.model_id)

    def describe(self) -> dict:
        return {"match_model": self.model_id}

    def load(self) -> "TextMatchScorer":
        device = pick_device(self.device)
        self._loaded = (*image_text_model(self.model_id, device), device)
        return self

    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        import torch

        model, processor, device = self._loaded
        tokenizer = getattr(processor, "tokenizer", processor)
        siglip = "siglip" in str(getattr(model.config, "model_type", ""))
        limit = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None) or 77
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = tokenizer(texts[i:i + self.batch_size], padding="max_length" if siglip else True,
                                truncation=True, max_length=limit, return_tensors="pt")
                enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                out.append(features(model.get_text_features(**enc)).float().cpu())
        emb = torch.cat(out)
        return (emb / emb.norm(dim=-1, keepdim=True)).numpy()

    def score(self, clip: ClipFrames) -> dict:
        return self.score_batch([clip])[0]

    def score_batch(self, clips: list[ClipFrames]) -> list[dict]:
        if self._loaded is None:
            self.load()
        model, processor, device = self._loaded
        todo = [(i, caption_of(c)) for i, c in enumerate(clips) if caption_of(c) and len(c.frames)]
        result = [{"text_match": math.nan} for _ in clips]
        if not todo:
            return result
        text = self.text_embeddings([t for _, t in todo])
        frames = [clips[i].key_frames(self.frames) for i, _ in todo]
        image = image_embeddings(model, processor, [f for fs in frames for f in fs], device, self.batch_size)
        bounds = np.cumsum([0] + [len(f) for f in frames])
        for k, ((i, _), a, b) in enumerate(zip(todo, bounds[:-1], bounds[1:])):
            result[i] = {"text_match": float((image[a:b] @ text[k]).mean())}
        return result

    def __getstate__(self):
        return {**self.__dict__, "_loaded": None}
