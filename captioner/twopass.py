"""Two-pass captioning: describe sampled frames one by one, then summarise them into one caption.

The summary is written by the same model (text-only turn) or by a named text LLM (`--summary-model`).
Frame requests carry the id `clip_id#k`, so the descriptions are matched back to their clip and frame by id.
"""

from __future__ import annotations

from .backends.base import Backend, GenerateOptions, Output, Request
from .prompts import load_prompt


class TextLLM(Backend):
    """A plain causal LM for the summary pass (chat template, left padding, greedy)."""

    name = "text-llm"

    def load(self) -> "TextLLM":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .models import ModelError, ensure_available, missing_weights_message

        ensure_available(self.spec)
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        try:
            self.tok = AutoTokenizer.from_pretrained(self.spec.model_id, trust_remote_code=self.trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(self.spec.model_id, dtype=dtype,
                                                              trust_remote_code=self.trust_remote_code)
        except OSError:
            raise ModelError(missing_weights_message(self.spec.model_id)) from None
        self.model.to(self.device).eval()
        self.tok.padding_side = "left"
        self.tok.pad_token = self.tok.pad_token or self.tok.eos_token
        return self

    def _generate(self, requests, options):
        import torch

        texts = [self.tok.apply_chat_template([{"role": "user", "content": r.prompt}], tokenize=False,
                                              add_generation_prompt=True) for r in requests]
        limit = options.effective_max_tokens()
        results = {}
        for i in range(0, len(requests), self.batch_size):
            batch = requests[i:i + self.batch_size]
            enc = self.tok(texts[i:i + self.batch_size], return_tensors="pt", padding=True).to(self.device)
            with torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=limit, do_sample=False)
            for r, row in zip(batch, out[:, enc["input_ids"].shape[1]:].tolist()):
                stop = next((k for k, t in enumerate(row) if t == self.tok.eos_token_id), None)
                toks = row[:stop] if stop is not None else row
                results[r.request_id] = Output(r.request_id, self.tok.decode(toks, skip_special_tokens=True).strip(),
                                               len(toks), hit_limit=stop is None and len(row) >= limit)
        return results


class TwoPass:
    """Callable like `Backend.generate`: clip video requests in, one summary caption per clip out."""

    def __init__(self, vision: Backend, summarizer: Backend, frame_prompt="frame", summary_prompt="summary",
                 frame_tokens: int = 64):
        self.vision, self.summarizer = vision, summarizer
        self.frame_prompt, self.summary_prompt = load_prompt(frame_prompt), load_prompt(summary_prompt)
        self.frame_tokens = frame_tokens

    @classmethod
    def create(cls, vision: Backend, summary_model: str | None = None, trust_remote_code: bool = False,
               load: bool = True):
        """`load=False` (a Ray driver, which only plans and writes): the summary model is named, not loaded."""
        if not summary_model:
            return cls(vision, vision)
        from .models import ModelSpec

        spec = ModelSpec(summary_model, summary_model, "text")
        text = TextLLM(spec, batch_size=vision.batch_size, device=vision.device, trust_remote_code=trust_remote_code)
        return cls(vision, text.load() if load else text)

    def describe(self) -> str:
        return f"{self.frame_prompt.prompt_id}+{self.summary_prompt.prompt_id}:{self.summarizer.spec.model_id}"

    def generate(self, requests: list[Request], options: GenerateOptions) -> dict[str, Output]:
        frame_reqs = []
        for r in requests:
            for k in range(len(r.frames)):
                frame_reqs.append(Request(f"{r.request_id}#{k}", self.frame_prompt.render(), r.frames[k:k + 1],
                                          as_image=True))
        described = self.vision.generate(frame_reqs, GenerateOptions(self.frame_tokens))
        summary_reqs = []
        for r in requests:
            times = [i / (r.fps or 25.0) for i in (r.frame_indices or range(len(r.frames)))]
            lines = "\n".join(f"{t:.1f}s: {described[f'{r.request_id}#{k}'].text}" for k, t in enumerate(times))
            text = self.summary_prompt.render(num_frames=len(r.frames), frame_descriptions=lines,
                                              duration=(r.clip_frames or len(r.frames)) / (r.fps or 25.0))
            summary_reqs.append(Request(r.request_id, text))
        return self.summarizer.generate(summary_reqs, options)
