"""vLLM backend (optional extra `shotcap[vllm]`, imported lazily): offline `vllm.LLM`, video `multi_modal_data`,
continuous batching. `LLM.generate` numbers requests itself, so the backend feeds the same engine that
`LLM.generate` drives (`llm.llm_engine.add_request(clip_id, ...)`, then `step()` until done): every request
carries its clip's id and every finished output is matched back by `output.request_id`, never by position."""

from __future__ import annotations

import logging
import time

from ..models import ModelError, ensure_available, missing_weights_message
from .base import Backend, GenerateOptions, Output, Request, qwen_frame_size

log = logging.getLogger(__name__)


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, spec, engine=None, sampling_cls=None, max_model_len: int = 32768, **options):
        super().__init__(spec, **options)
        self.llm = engine  # a `vllm.LLM`; tests pass a fake with the same surface
        self.sampling_cls = sampling_cls  # `vllm.SamplingParams` unless given
        self.max_model_len = max_model_len
        self.tokenizer = None

    def load(self) -> "VLLMBackend":
        if self.llm is None:
            ensure_available(self.spec)
            try:
                from vllm import LLM
            except ImportError:
                raise ModelError("the vllm backend needs vLLM: pip install 'shotcap[vllm]'") from None
            try:
                self.llm = LLM(model=self.spec.model_id, trust_remote_code=self.trust_remote_code,
                               max_model_len=self.max_model_len, max_num_seqs=self.batch_size,
                               limit_mm_per_prompt={"video": 1, "image": 1})
            except OSError:
                raise ModelError(missing_weights_message(self.spec.model_id)) from None
        self.tokenizer = self.llm.get_tokenizer()
        return self

    def frame_size(self, width, height):
        if self.spec.is_qwen:  # vLLM resizes again with the same rule: decode at that size already
            return qwen_frame_size(width, height, factor=32 if self.spec.family == "qwen3-vl" else 28,
                                   max_pixels=self.max_pixels)
        return super().frame_size(width, height)

    def frame_count(self, n):
        return max(2, -(-int(n) // 2) * 2) if self.spec.is_qwen else super().frame_count(n)

    def _sampling(self, options: GenerateOptions):
        if self.sampling_cls is None:
            from vllm import SamplingParams

            self.sampling_cls = SamplingParams
        kw = dict(temperature=0.0, max_tokens=options.effective_max_tokens())
        if options.retry:
            kw["repetition_penalty"] = 1.15
        return self.sampling_cls(**kw)

    def _prompt(self, r: Request) -> dict:
        kind = "image" if r.as_image else "video"
        content = ([] if r.frames is None else [{"type": kind}]) + [{"type": "text", "text": r.prompt}]
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)
        prompt = {"prompt": text}
        if r.frames is not None:
            prompt["multi_modal_data"] = {kind: r.frames[0] if r.as_image else r.frames}
            if not r.as_image and self.spec.is_qwen and r.fps and r.clip_frames:
                sampled_fps = len(r.frames) / r.clip_frames * r.fps
                prompt["mm_processor_kwargs"] = {"fps": sampled_fps}
        return prompt

    def _generate(self, requests, options: GenerateOptions):
        params = self._sampling(options)
        engine = self.llm.llm_engine
        sent, results = {}, {}
        t0 = time.perf_counter()
        try:
            for r in requests:
                try:
                    engine.add_request(r.request_id, self._prompt(r), params)
                except ValueError as e:  # refused (a prompt past max_model_len, say): this clip alone
                    log.warning("vLLM refused %s: %s", r.request_id, " ".join(str(e).split())[:200])
                    results[r.request_id] = Output(r.request_id, "", 0, hit_limit=False)  # flagged empty
                    continue
                sent[r.request_id] = r
            t1 = time.perf_counter()
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if not out.finished:
                        continue
                    if out.request_id not in sent:
                        raise RuntimeError(f"vLLM returned an output for unknown request {out.request_id}")
                    c = out.outputs[0]
                    results[out.request_id] = Output(out.request_id, c.text.strip(), len(c.token_ids),
                                                     hit_limit=c.finish_reason == "length")
        except BaseException:  # leave the shared engine empty, or the next call would get these outputs
            engine.abort_request([i for i in sent if i not in results])
            raise
        self.stats["preprocess_s"] += t1 - t0
        self.stats["generate_s"] += time.perf_counter() - t1
        return results
