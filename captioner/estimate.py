"""What captioning costs: for a model and the captioner's frame sampling, the frames each clip shows the model,
the size they are decoded at, the visual tokens they become, the prompt's text tokens and the output tokens.

With the model's processor at hand (a local folder or the Hugging Face cache; nothing is downloaded) the counts
are exact: the caption-videos input of a clip of that shape is built by the transformers backend and its tokens
counted. Without it, Qwen-VL counts follow the family's published rule at the size the captioner decodes
(14-pixel patches merged 2x2, 16-pixel for Qwen3-VL, two frames per temporal patch), and the prompt's tokens are
estimated at 4 bytes of text per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .backends.base import Request
from .backends.transformers_backend import TransformersBackend
from .backends.vllm_backend import VLLMBackend
from .frames import FramePolicy
from .models import ModelError, resolve_model
from .prompts import clip_values, load_prompt

# visual tokens per frame of the non-Qwen families (their processors pool each frame to a fixed grid)
TOKENS_PER_FRAME = {"llava-onevision": 196, "llava-next-video": 144}
CHAT_TOKENS = 20  # role markers and the default system turn of a chat template, when no tokenizer is at hand


@dataclass
class ClipTokens:
    frames: int  # frames shown to the model
    width: int  # decoded frame size
    height: int
    visual: int  # visual tokens
    text: int  # prompt and chat-template tokens
    output: int  # tokens generated (at most max_new_tokens)


class CaptionCost:
    """Tokens per clip for `caption-videos` run with these options (its own defaults)."""

    def __init__(self, model: str = "qwen-vl", prompt: str = "detailed", num_frames: int = 8,
                 sample_fps: float | None = None, max_frames: int = 32, max_pixels: int | None = None,
                 max_new_tokens: int = 256, trust_remote_code: bool = False, exact: bool = True):
        self.spec = resolve_model(model, trust_remote_code)
        self.policy = FramePolicy(num_frames, sample_fps, max_frames)
        self.prompt = load_prompt(prompt)
        self.max_new_tokens = int(max_new_tokens)
        self.backend = TransformersBackend(self.spec, max_pixels=max_pixels)
        self.exact = exact and self._processor(trust_remote_code)
        if not self.exact:  # the captioner's sizing without a processor (its vLLM backend's rule)
            self.backend = VLLMBackend(self.spec, max_pixels=max_pixels)
            if not self.spec.is_qwen and self.spec.family not in TOKENS_PER_FRAME:
                raise ModelError(f"{self.spec.model_id}: no token rule for the {self.spec.family} family without its "
                                 f"processor; pass a local model folder (or fetch it into the cache)")

    def _processor(self, trust_remote_code: bool) -> bool:
        from transformers import AutoProcessor

        try:
            self.backend.processor = AutoProcessor.from_pretrained(
                self.spec.model_id, local_files_only=True, trust_remote_code=trust_remote_code)
        except (OSError, ValueError):
            return False
        vp = getattr(self.backend.processor, "video_processor", None)
        if vp is not None and hasattr(vp, "cap_pixels_per_frame") and vp.cap_pixels_per_frame is None:
            vp.cap_pixels_per_frame = True  # as the backend's load() sets it
        return True

    def describe(self) -> dict:
        return {"model": self.spec.model_id, "family": self.spec.family, "prompt_id": self.prompt.prompt_id,
                "num_frames": self.policy.num_frames, "sample_fps": self.policy.sample_fps,
                "max_frames": self.policy.max_frames, "max_new_tokens": self.max_new_tokens,
                "counted_with": "its processor" if self.exact else "the family's rule: no processor here"}

    def clip(self, row: dict) -> ClipTokens:
        """Tokens of one manifest row (`width`, `height`, `fps`, `start_frame`, `end_frame`, `num_frames`, ...)."""
        idx = self.policy.indices(row, self.backend.frame_count)
        w, h = self.backend.frame_size(int(row["width"]), int(row["height"]))
        text = self.prompt.render(**clip_values(row, len(idx)))
        if self.exact:
            visual, total = self._count(text, len(idx), w, h, row)
            return ClipTokens(len(idx), w, h, visual, total - visual, self.max_new_tokens)
        if self.spec.is_qwen:
            factor = 32 if self.spec.family == "qwen3-vl" else 28
            visual = len(idx) // 2 * (h // factor) * (w // factor)
        else:
            visual = len(idx) * TOKENS_PER_FRAME[self.spec.family]
        return ClipTokens(len(idx), w, h, visual, math.ceil(len(text.encode()) / 4) + CHAT_TOKENS,
                          self.max_new_tokens)

    def _count(self, text: str, n: int, w: int, h: int, row: dict) -> tuple[int, int]:
        """(visual tokens, all input tokens) of the transformers backend's input for such a clip."""
        proc = self.backend.processor
        frames = np.zeros((n, h, w, 3), np.uint8)
        req = Request("plan", text, frames, frame_indices=list(range(n)), fps=float(row.get("fps") or 25.0),
                      clip_frames=int(row.get("num_frames") or n))
        ids = self.backend._inputs([req])["input_ids"][0]
        token = getattr(proc, "video_token_id", None)
        if token is None:
            token = proc.tokenizer.convert_tokens_to_ids(getattr(proc, "video_token", "<|video_pad|>"))
        return int((ids == token).sum()), int(len(ids))

    def dataset(self, rows, output_tokens_per_s: float | None = None) -> dict:
        """Tokens for every clip of a manifest (a DataFrame), summed; the output tokens are the rows' own
        `caption_tokens` where they were captioned, else `max_new_tokens` (at most); GPU-hours at a decode rate."""
        if rows.empty:
            raise ModelError("no clips to caption")
        defaults = {"fps": 25.0, "start_frame": 0, "start_sec": 0.0}
        rows = rows.assign(**{k: v for k, v in defaults.items() if k not in rows})
        if "end_frame" not in rows:
            rows = rows.assign(end_frame=rows["start_frame"] + rows["num_frames"])
        if "end_sec" not in rows:
            rows = rows.assign(end_sec=rows["start_sec"] + rows["num_frames"] / rows["fps"])
        key = rows[["width", "height", "fps"]].assign(n=rows["end_frame"] - rows["start_frame"]).astype(float)
        visual = text = frames = 0
        for idx in key.groupby(list(key.columns), sort=False).indices.values():  # alike clips, alike tokens
            clip, n = self.clip(rows.iloc[idx[0]].to_dict()), len(idx)
            visual, text, frames = visual + clip.visual * n, text + clip.text * n, frames + clip.frames * n
        measured = "caption_tokens" in rows and rows["caption_tokens"].notna().any()
        per_output = float(rows["caption_tokens"].mean()) if measured else float(self.max_new_tokens)
        output, n = per_output * len(rows), len(rows)
        return {**self.describe(), "clips": n, "frames_per_clip": frames / n, "visual_tokens_per_clip": visual / n,
                "text_tokens_per_clip": text / n, "output_tokens_per_clip": per_output,
                "output_from": "the dataset's caption_tokens" if measured else "max_new_tokens (at most)",
                "input_tokens": visual + text, "output_tokens": output,
                "gpu_hours": output / output_tokens_per_s / 3600 if output_tokens_per_s else None,
                "rate": f"{output_tokens_per_s:,.0f} output tokens/s/GPU" if output_tokens_per_s else None}
