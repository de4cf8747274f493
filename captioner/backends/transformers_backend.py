"""Hugging Face transformers backend: the model's own processor and chat template, left-padded batches,
bf16 on GPU (fp32 on CPU), greedy decoding. Frames go in as sampled arrays with their timestamps."""

from __future__ import annotations

import time

import numpy as np

from ..models import ModelError, ensure_available, missing_weights_message
from .base import QWEN_VIDEO_MAX_PIXELS, Backend, GenerateOptions, Output, Request, qwen_frame_size


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.processor = None
        self.model = None

    # ------------------------------------------------------------ loading
    def load(self) -> "TransformersBackend":
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        ensure_available(self.spec)
        kw = dict(trust_remote_code=self.trust_remote_code)
        try:
            self.processor = AutoProcessor.from_pretrained(self.spec.model_id, **kw)
            self.model = AutoModelForImageTextToText.from_pretrained(self.spec.model_id, dtype=dtype, **kw)
        except ValueError as e:  # e.g. a checkpoint whose architecture has no image-text-to-text class
            raise ModelError(f"{self.spec.model_id}: the transformers backend cannot run this model "
                             f"({' '.join(str(e).split())[:160]})") from None
        except OSError as e:
            if self.spec.is_local:
                raise ModelError(f"{self.spec.model_id}: cannot load model ({' '.join(str(e).split())[:200]})")
            raise ModelError(missing_weights_message(self.spec.model_id)) from None
        self.model.to(device).eval()
        self.device = device
        tok = self.processor.tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        vp = getattr(self.processor, "video_processor", None)
        if vp is not None and hasattr(vp, "cap_pixels_per_frame") and vp.cap_pixels_per_frame is None:
            vp.cap_pixels_per_frame = True  # the qwen-vl-utils rule
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
        self.eos_ids.discard(None)
        return self

    # ------------------------------------------------------------ what the model wants
    def _video_processor(self):
        return getattr(self.processor, "video_processor", None) or self.processor.image_processor

    def frame_size(self, width, height):
        vp = self._video_processor()
        if self.spec.is_qwen:
            factor = int(getattr(vp, "patch_size", 14)) * int(getattr(vp, "merge_size", 2))
            size = getattr(vp, "size", None) or {}
            lo = getattr(vp, "min_pixels", None) or size.get("shortest_edge") or factor * factor * 4
            hi = getattr(vp, "max_pixels", None) or size.get("longest_edge") or QWEN_VIDEO_MAX_PIXELS
            return qwen_frame_size(width, height, factor, min(hi, self.max_pixels or QWEN_VIDEO_MAX_PIXELS), lo)
        size = getattr(vp, "size", None) or {}
        if "height" in size and "width" in size:
            return int(size["width"]), int(size["height"])
        return super().frame_size(width, height)

    def frame_count(self, n):
        if self.spec.is_qwen:
            t = int(getattr(self._video_processor(), "temporal_patch_size", 2))
            return max(t, -(-int(n) // t) * t)  # a whole number of temporal patches
        return super().frame_count(n)

    # ------------------------------------------------------------ generation
    def _inputs(self, batch: list[Request]):
        from transformers.video_utils import VideoMetadata

        texts, videos, images, metas = [], [], [], []
        for r in batch:
            content = []
            if r.frames is not None and r.as_image:
                content.append({"type": "image"})
                images.append(r.frames[0])
            elif r.frames is not None:
                content.append({"type": "video"})
                videos.append(r.frames)
                metas.append(VideoMetadata(total_num_frames=r.clip_frames or len(r.frames), fps=r.fps or None,
                                           width=r.frames.shape[2], height=r.frames.shape[1],
                                           frames_indices=list(r.frame_indices) or list(range(len(r.frames)))))
            content.append({"type": "text", "text": r.prompt})
            msgs = [{"role": "user", "content": content}]
            texts.append(self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
        kw = dict(text=texts, padding=True, return_tensors="pt")
        if images:
            kw["images"] = images
        if videos:
            kw["videos"] = videos
            kw["do_sample_frames"] = False  # frames are already sampled (some processors would sample again)
            if self.spec.is_qwen:
                kw["video_metadata"] = metas
        return self.processor(**kw)

    def _generate(self, requests, options: GenerateOptions):
        import torch

        groups: dict[tuple, list[Request]] = {}
        for r in requests:  # Qwen packs videos of any length; other processors need equal shapes in a batch
            kind = "text" if r.frames is None else "image" if r.as_image else "video"
            shape = () if self.spec.is_qwen or kind == "text" else (r.frames[:1] if r.as_image else r.frames).shape
            groups.setdefault((kind, *shape), []).append(r)
        limit = options.effective_max_tokens()
        gen_kw = dict(max_new_tokens=limit, do_sample=False)
        if options.retry:
            gen_kw.update(repetition_penalty=1.15, no_repeat_ngram_size=4)
        results: dict[str, Output] = {}
        for group in groups.values():
            for i in range(0, len(group), self.batch_size):
                batch = group[i:i + self.batch_size]
                t0 = time.perf_counter()
                inputs = self._inputs(batch).to(self.device)
                if self.device.startswith("cuda"):
                    for k, v in inputs.items():
                        if torch.is_floating_point(v):
                            inputs[k] = v.to(self.model.dtype)
                t1 = time.perf_counter()
                with torch.inference_mode():
                    out = self.model.generate(**inputs, **gen_kw)
                t2 = time.perf_counter()
                self.stats["preprocess_s"] += t1 - t0
                self.stats["generate_s"] += t2 - t1
                new = out[:, inputs["input_ids"].shape[1]:].cpu().numpy()
                for r, row in zip(batch, new):  # rows are in the order of `batch`: pair by its ids
                    results[r.request_id] = self._output(r.request_id, row, limit)
        return results

    def _output(self, request_id: str, row: np.ndarray, limit: int) -> Output:
        stop = next((k for k, t in enumerate(row.tolist()) if t in self.eos_ids), None)
        tokens = row[:stop] if stop is not None else row
        text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True)
        return Output(request_id, text.strip(), int(len(tokens)), hit_limit=stop is None and len(row) >= limit)

    def close(self):
        self.model = None
