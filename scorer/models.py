"""Model access for the model-based scorers: checked in the driver before any work, loaded in each worker.

A model is a local folder or a Hugging Face hub id. `check_model` is the driver's check: a folder must hold a
config.json; a hub id must be in the local cache, or be downloadable (offline, a missing one is
`index.hub.missing_model_message`: one line, exit status 2). `available` answers the same question without
raising, for the scorers that run by default only when their model is already here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from index.hub import is_cached, local_only, missing_model_message, offline


class ModelError(ValueError):
    """A model that cannot be loaded, with a one-line reason."""


def check_model(model_id: str) -> None:
    folder = Path(str(model_id))
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise ModelError(f"{model_id}: not a model folder (no config.json)")
        return
    if is_cached(model_id):
        return
    if offline():
        raise ModelError(missing_model_message(model_id))
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(model_id, "config.json")
    except Exception:  # a wrong id, a gated repo, a network error: the same advice
        raise ModelError(missing_model_message(model_id)) from None


def available(model_id: str) -> bool:
    """Whether the model can be loaded without a download."""
    try:
        return is_cached(model_id)
    except Exception:  # an id the hub library refuses (a malformed name): not here
        return False


def hub_file(repo: str, filename: str, download: bool = True) -> str | None:
    """Local path of one file of a hub repo: from the cache, or downloaded when online and `download`.
    None when it is not here and may not be fetched; ModelError when a fetch fails."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo, filename)
    except Exception:
        cached = None
    if isinstance(cached, str):
        return cached
    if not download:
        return None
    if offline():
        raise ModelError(missing_model_message(repo))
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, filename)
    except Exception:
        raise ModelError(missing_model_message(repo)) from None


def load_pretrained(cls, model_id: str, **kw):
    """`cls.from_pretrained` reading only the local cache when offline; a failure is one ModelError line."""
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per weight file, in every worker, says nothing to a user
    try:
        return cls.from_pretrained(str(model_id), local_files_only=local_only(str(model_id)), **kw)
    except (OSError, ValueError) as e:
        if Path(str(model_id)).exists():
            raise ModelError(f"{model_id}: cannot load ({str(e).splitlines()[0][:200]})") from None
        raise ModelError(missing_model_message(str(model_id))) from None


def pick_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


_shared: dict = {}


def image_text_model(model_id: str, device: str):
    """(model, processor) of a CLIP or SigLIP checkpoint, once per process: `aesthetic` and `text_match`
    share it when they name the same model."""
    key = (str(model_id), device)
    if key not in _shared:
        from transformers import AutoModel, AutoProcessor

        processor = load_pretrained(AutoProcessor, model_id)
        model = load_pretrained(AutoModel, model_id).to(device).eval()
        if not hasattr(model, "get_image_features"):
            raise ModelError(f"{model_id}: {type(model).__name__} has no get_image_features "
                             "(use a CLIP or SigLIP checkpoint)")
        _shared[key] = (model, processor)
    return _shared[key]


def features(out):
    """A `get_*_features` result as a tensor (some transformers versions return a model output)."""
    import torch

    if torch.is_tensor(out):
        return out
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    raise TypeError(f"unexpected features output {type(out).__name__}")


def image_embeddings(model, processor, images: list[np.ndarray], device: str, batch: int = 32) -> np.ndarray:
    """(N, D) float32 L2-normalised image embeddings of RGB uint8 frames."""
    import torch

    image_processor = getattr(processor, "image_processor", processor)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            pixels = image_processor(images=list(images[i:i + batch]), return_tensors="pt")["pixel_values"]
            out.append(features(model.get_image_features(pixel_values=pixels.to(device))).float().cpu())
    if not out:
        return np.zeros((0, 0), np.float32)
    emb = torch.cat(out)
    return (emb / emb.norm(dim=-1, keepdim=True)).numpy()
