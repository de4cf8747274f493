"""Model aliases and resolution: an alias, a Hugging Face id or a local folder -> a `ModelSpec`.

The family decides how frames are sized and which processor options apply; it is read from the alias table,
from a local folder's config.json, or guessed from the id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class ModelError(ValueError):
    """A model that cannot be used, with a one-line reason."""


@dataclass(frozen=True)
class ModelSpec:
    name: str  # what the user typed
    model_id: str  # hub id or local folder
    family: str  # "qwen2-vl", "qwen2.5-vl", "qwen3-vl", "llava-onevision", "llava-next-video", "cogvlm2-video"
    remote_code: bool = False  # needs trust_remote_code

    @property
    def is_qwen(self) -> bool:
        return self.family.startswith("qwen")

    @property
    def is_local(self) -> bool:
        return Path(self.model_id).is_dir()


ALIASES: dict[str, ModelSpec] = {
    "qwen-vl": ModelSpec("qwen-vl", "Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5-vl"),
    "qwen2-vl": ModelSpec("qwen2-vl", "Qwen/Qwen2-VL-7B-Instruct", "qwen2-vl"),
    "qwen2-vl-2b": ModelSpec("qwen2-vl-2b", "Qwen/Qwen2-VL-2B-Instruct", "qwen2-vl"),
    "qwen2.5-vl-3b": ModelSpec("qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-3B-Instruct", "qwen2.5-vl"),
    "qwen2.5-vl-7b": ModelSpec("qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5-vl"),
    "qwen2.5-vl-72b": ModelSpec("qwen2.5-vl-72b", "Qwen/Qwen2.5-VL-72B-Instruct", "qwen2.5-vl"),
    "qwen3-vl": ModelSpec("qwen3-vl", "Qwen/Qwen3-VL-8B-Instruct", "qwen3-vl"),
    "qwen3-vl-4b": ModelSpec("qwen3-vl-4b", "Qwen/Qwen3-VL-4B-Instruct", "qwen3-vl"),
    "llava": ModelSpec("llava", "llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava-onevision"),
    "llava-onevision": ModelSpec("llava-onevision", "llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava-onevision"),
    "llava-next-video": ModelSpec("llava-next-video", "llava-hf/LLaVA-NeXT-Video-7B-hf", "llava-next-video"),
    "cogvlm": ModelSpec("cogvlm", "THUDM/cogvlm2-video-llama3-chat", "cogvlm2-video", remote_code=True),
}

# config.json model_type -> family
MODEL_TYPES = {
    "qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": "qwen3-vl", "qwen3_vl_moe": "qwen3-vl",
    "llava_onevision": "llava-onevision", "llava_next_video": "llava-next-video",
}


def _transformers_has(family: str) -> bool:
    needed = {"qwen3-vl": "Qwen3VLForConditionalGeneration"}.get(family)
    if needed is None:  # importing transformers costs seconds (it imports torch): only when there is a question
        return True
    import transformers

    return hasattr(transformers, needed)


def _family_from_id(model_id: str) -> str:
    low = model_id.lower()
    for key, fam in (("qwen3-vl", "qwen3-vl"), ("qwen2.5-vl", "qwen2.5-vl"), ("qwen2_5_vl", "qwen2.5-vl"),
                     ("qwen2-vl", "qwen2-vl"), ("onevision", "llava-onevision"), ("next-video", "llava-next-video"),
                     ("cogvlm", "cogvlm2-video")):
        if key in low:
            return fam
    return "generic"


def resolve_model(name: str, trust_remote_code: bool = False) -> ModelSpec:
    """Alias, hub id or local folder -> ModelSpec; refuses remote-code models without the flag."""
    if name in ALIASES:
        spec = ALIASES[name]
    elif Path(name).is_dir():
        cfg_path = Path(name) / "config.json"
        if not cfg_path.exists():
            raise ModelError(f"{name}: a model folder needs a config.json")
        cfg = json.loads(cfg_path.read_text())
        family = MODEL_TYPES.get(cfg.get("model_type", ""), _family_from_id(str(cfg.get("_name_or_path", name))))
        spec = ModelSpec(name, str(Path(name)), family, remote_code=bool(cfg.get("auto_map")))
    elif "/" in name and not name.startswith(("/", ".")):
        fam = _family_from_id(name)
        spec = ModelSpec(name, name, fam, remote_code=fam == "cogvlm2-video")
    else:
        raise ModelError(f"unknown model {name!r}: use an alias ({', '.join(ALIASES)}), a Hugging Face id "
                         f"or a local folder")
    if spec.remote_code and not trust_remote_code:
        raise ModelError(f"{spec.model_id} runs code from its repository; pass --trust-remote-code to allow it")
    if not _transformers_has(spec.family):
        raise ModelError(f"{spec.model_id} needs a newer transformers ({spec.family} is not in this install)")
    return spec


def _offline() -> bool:
    from index.hub import offline

    return offline()


def ensure_available(spec: ModelSpec) -> None:
    """Offline, a hub id must already be in the local cache: fail at once with the download command."""
    from index.hub import is_cached

    if spec.is_local or not _offline():
        return
    if not is_cached(spec.model_id):
        raise ModelError(missing_weights_message(spec.model_id))


def missing_weights_message(model_id: str) -> str:
    from index.hub import missing_model_message

    return missing_model_message(model_id)
