"""`aesthetic` (1-10, higher is more pleasing): the LAION improved aesthetic predictor.

The formula of the public predictor, unchanged, so thresholds from Open-Sora (>= 4.5 to 5), Data-Juicer and
the papers carry over: the CLIP ViT-L/14 image embedding of a frame, L2-normalised, through a linear MLP
(768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropout between, no activations) with the weights published as
`sac+logos+ava1-l14-linearMSE.pth`. A clip's score is the mean over its first, middle and last sampled frames.

The CLIP model is `--aesthetic-model` (default openai/clip-vit-large-patch14); the MLP weights (a torch state
dict in the original `layers.N` layout, or the same in .safetensors) are `--aesthetic-head`: a file, a hub file
`owner/repo/file.pth`, or `auto`: a head file inside the model folder (HEAD_NAMES), else DEFAULT_HEAD (the
same weights as mirrored on the hub for TRL's DDPO example).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .base import ClipFrames, Scorer
from .models import ModelError, available, check_model, hub_file, image_embeddings, image_text_model, pick_device

DEFAULT_MODEL = "openai/clip-vit-large-patch14"
DEFAULT_HEAD = "trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"
HEAD_NAMES = ("sac+logos+ava1-l14-linearMSE.pth", "aesthetic-model.pth", "aesthetic_head.safetensors")


def make_head(input_size: int):
    """The predictor's MLP, layer for layer as published (state-dict keys layers.0, .2, .4, .6, .7)."""
    from torch import nn

    return nn.Sequential(nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))


def load_head(path):
    """The MLP from a state dict file (weights_only torch.load, or safetensors)."""
    import torch

    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k[len("layers."):] if k.startswith("layers.") else k: v for k, v in state.items()}
    if "0.weight" not in state:
        raise ModelError(f"{path}: not an aesthetic predictor head (no layers.0.weight)")
    head = make_head(int(state["0.weight"].shape[1]))
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"{path}: not an aesthetic predictor head ({str(e).splitlines()[0][:160]})") from None
    return head.eval()


def resolve_head(spec: str, model_id: str, download: bool = True) -> str | None:
    """A local path to the head weights (see the module docstring); None when `auto` finds nothing here and
    `download` is off."""
    if spec != "auto":
        if Path(spec).is_file():
            return spec
        parts = spec.split("/")
        if len(parts) < 3:
            raise ModelError(f"--aesthetic-head {spec}: no such file (give a file or owner/repo/file.pth)")
        return hub_file("/".join(parts[:2]), "/".join(parts[2:]), download)
    folder = Path(model_id)
    for name in HEAD_NAMES:
        if folder.is_dir() and (folder / name).is_file():
            return str(folder / name)
        if not folder.exists():
            found = hub_file(model_id, name, download=False)
            if found:
                return found
    return resolve_head(DEFAULT_HEAD, model_id, download)


class AestheticScorer(Scorer):
    name = "aesthetic"
    columns = {"aesthetic": "float"}
    uses_gpu = True

    def __init__(self, model: str = DEFAULT_MODEL, head: str = "auto", device: str | None = None,
                 frames: int = 3, batch_size: int = 32):
        self.model_id, self.head_spec, self.device = str(model), str(head), device
        self.frames, self.batch_size = int(frames), int(batch_size)
        self.head_path = None
        self._loaded = None

    def available(self) -> bool:
        try:
            return available(self.model_id) and resolve_head(self.head_spec, self.model_id, download=False) is not None
        except ModelError:
            return False

    def check(self) -> None:
        check_model(self.model_id)
        self.head_path = resolve_head(self.head_spec, self.model_id)

    def describe(self) -> dict:
        return {"aesthetic_model": self.model_id, "aesthetic_head": self.head_spec}

    def load(self) -> "AestheticScorer":
        device = pick_device(self.device)
        model, processor = image_text_model(self.model_id, device)
        head = load_head(self.head_path or resolve_head(self.head_spec, self.model_id))
        self._loaded = (model, processor, head.to(device), device)
        return self

    def score(self, clip: ClipFrames) -> dict:
        return self.score_batch([clip])[0]

    def score_batch(self, clips: list[ClipFrames]) -> list[dict]:
        import torch

        if self._loaded is None:
            self.load()
        model, processor, head, device = self._loaded
        frames = [c.key_frames(self.frames) for c in clips]
        emb = image_embeddings(model, processor, [f for fs in frames for f in fs], device, self.batch_size)
        if not len(emb):
            return [{"aesthetic": math.nan} for _ in clips]
        with torch.inference_mode():
            per_frame = head(torch.from_numpy(emb).to(device)).float().cpu().numpy()[:, 0]
        bounds = np.cumsum([0] + [len(f) for f in frames])
        return [{"aesthetic": float(per_frame[a:b].mean()) if b > a else math.nan}
                for a, b in zip(bounds[:-1], bounds[1:])]

    def __getstate__(self):  # models are loaded where they run
        return {**self.__dict__, "_loaded": None}
