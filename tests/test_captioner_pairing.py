"""Outputs are matched to clips by request id: a fake vLLM engine that finishes out of order, and the real
transformers backend on batches of clips with different frame counts and prompts."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest

from captioner.backends import GenerateOptions, Request, make_backend
from captioner.models import resolve_model
from captioner.testing import build_tiny_model


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return build_tiny_model("qwen2-vl", tmp_path_factory.mktemp("tiny_qwen2vl"))


def _requests(lengths, size=(56, 84), seed=0):
    rng = np.random.default_rng(seed)
    reqs = []
    for k, t in enumerate(lengths):
        frames = rng.integers(0, 255, (t, *size, 3), dtype=np.uint8)
        reqs.append(Request(f"clip{k:02d}", f"Describe clip number {k} of {t} frames." + " detail" * k, frames,
                            frame_indices=list(range(0, 3 * t, 3)), fps=25.0, clip_frames=3 * t))
    return reqs


class FakeLLM:
    """Stands in for `vllm.LLM` (vLLM cannot be installed here): same engine surface, finishes requests in a
    shuffled order over several steps, and answers with text that names what it was sent."""

    def __init__(self, tokenizer, seed=0):
        self.tokenizer = tokenizer
        self.llm_engine = self
        self.pending = []
        self.rng = random.Random(seed)
        self.seen = {}
        self.max_frames = 1000

    def get_tokenizer(self):
        return self.tokenizer

    def add_request(self, request_id, prompt, params):
        if len(prompt["multi_modal_data"]["video"]) > self.max_frames:  # as vLLM refuses a too-long prompt
            raise ValueError("The decoder prompt is longer than the maximum model length")
        self.pending.append((request_id, prompt, params))
        self.seen[request_id] = prompt

    def abort_request(self, request_ids):
        self.pending = [p for p in self.pending if p[0] not in set(request_ids)]

    def has_unfinished_requests(self):
        return bool(self.pending)

    def step(self):
        self.rng.shuffle(self.pending)
        done, self.pending = self.pending[:2], self.pending[2:]
        outs = []
        for rid, prompt, params in done:
            video = prompt["multi_modal_data"]["video"]
            text = f"frames={len(video)} sum={int(video.sum())}"
            finish = "length" if params["max_tokens"] < 10 else "stop"
            outs.append(SimpleNamespace(request_id=rid, finished=True, prompt=prompt["prompt"], outputs=[
                SimpleNamespace(text=text, token_ids=list(range(len(text.split()))), finish_reason=finish)]))
        outs.append(SimpleNamespace(request_id="still-running", finished=False, outputs=[]))
        return outs


def test_vllm_outputs_are_matched_by_request_id(tiny_qwen):
    from transformers import AutoTokenizer

    fake = FakeLLM(AutoTokenizer.from_pretrained(tiny_qwen))
    backend = make_backend("vllm", resolve_model(tiny_qwen), engine=fake, sampling_cls=dict).load()
    reqs = _requests([2, 6, 4, 8, 2, 4, 6])
    out = backend.generate(reqs, GenerateOptions(max_new_tokens=64))
    assert set(out) == {r.request_id for r in reqs}
    for r in reqs:
        assert out[r.request_id].text == f"frames={len(r.frames)} sum={int(r.frames.sum())}"
        assert not out[r.request_id].hit_limit
        sent = fake.seen[r.request_id]
        assert "<|video_pad|>" in sent["prompt"] and r.prompt in sent["prompt"]
        assert sent["mm_processor_kwargs"]["fps"] == pytest.approx(len(r.frames) / r.clip_frames * 25.0)
    short = backend.generate(reqs[:2], GenerateOptions(max_new_tokens=4))
    assert all(o.hit_limit for o in short.values())


def test_vllm_unknown_output_id_is_an_error(tiny_qwen):
    from transformers import AutoTokenizer

    class WrongIds(FakeLLM):
        def step(self):
            outs = super().step()
            for o in outs:
                o.request_id = "someone-else"
            return outs

    backend = make_backend("vllm", resolve_model(tiny_qwen), engine=WrongIds(AutoTokenizer.from_pretrained(tiny_qwen)),
                           sampling_cls=dict).load()
    with pytest.raises(RuntimeError, match="unknown request"):
        backend.generate(_requests([2, 2]), GenerateOptions(max_new_tokens=8))


def test_vllm_refused_request_is_that_clip_alone_and_an_error_leaves_the_engine_clean(tiny_qwen):
    from transformers import AutoTokenizer

    fake = FakeLLM(AutoTokenizer.from_pretrained(tiny_qwen))
    fake.max_frames = 6
    backend = make_backend("vllm", resolve_model(tiny_qwen), engine=fake, sampling_cls=dict).load()
    reqs = _requests([2, 8, 4])
    out = backend.generate(reqs, GenerateOptions(max_new_tokens=64))
    assert out["clip01"].text == "" and out["clip00"].text.startswith("frames=2") and out["clip02"].text
    assert not fake.has_unfinished_requests()

    class Broken(FakeLLM):
        def step(self):
            raise RuntimeError("engine died")

    broken = Broken(AutoTokenizer.from_pretrained(tiny_qwen))
    backend = make_backend("vllm", resolve_model(tiny_qwen), engine=broken, sampling_cls=dict).load()
    with pytest.raises(RuntimeError, match="engine died"):
        backend.generate(reqs, GenerateOptions(max_new_tokens=64))
    assert not broken.has_unfinished_requests()  # the next unit's call starts from an empty engine


def test_transformers_batches_of_mixed_lengths_pair_like_single_requests(tiny_qwen):
    reqs = _requests([2, 6, 4, 2, 6, 4], seed=1)
    batched = make_backend("transformers", resolve_model(tiny_qwen), batch_size=4).load()
    shuffled = reqs[::-1]
    out = batched.generate(shuffled, GenerateOptions(max_new_tokens=6))
    single = make_backend("transformers", resolve_model(tiny_qwen), batch_size=1).load()
    texts = set()
    for r in reqs:
        alone = single.generate([r], GenerateOptions(max_new_tokens=6))[r.request_id]
        assert out[r.request_id].text == alone.text, r.request_id
        assert out[r.request_id].num_tokens == alone.num_tokens
        texts.add(alone.text)
    assert len(texts) > 1  # different clips really give different outputs, so a mix-up would show
    assert batched.stats["generate_s"] > 0 and batched.stats["output_tokens"] > 0


def test_duplicate_request_ids_are_refused(tiny_qwen):
    backend = make_backend("transformers", resolve_model(tiny_qwen)).load()
    reqs = _requests([2, 2])
    reqs[1].request_id = reqs[0].request_id
    with pytest.raises(ValueError, match="unique"):
        backend.generate(reqs, GenerateOptions(max_new_tokens=2))


def test_frame_timestamps_reach_the_qwen25_processor(tmp_path):
    """Qwen2.5-VL turns the sampled frame rate into `second_per_grid_ts` (its temporal position scale)."""
    model = build_tiny_model("qwen2.5-vl", tmp_path / "q25")
    backend = make_backend("transformers", resolve_model(model)).load()
    frames = np.zeros((8, 56, 84, 3), np.uint8)
    slow = Request("a", "x", frames, frame_indices=list(range(0, 40, 5)), fps=25.0, clip_frames=40)  # 5 fps
    fast = Request("b", "x", frames, frame_indices=list(range(0, 80, 10)), fps=25.0, clip_frames=80)  # 2.5 fps
    inputs = backend._inputs([slow, fast])
    assert inputs["second_per_grid_ts"].tolist() == pytest.approx([2 / 5.0, 2 / 2.5])
    w, h = backend.frame_size(1920, 1080)  # qwen-vl-utils rule: multiples of 28, at most max_pixels
    assert (w, h) == (140, 84) and w % 28 == h % 28 == 0 and w * h <= 28 * 28 * 16
    assert backend.frame_count(5) == 6  # whole temporal patches of 2 frames


def test_qwen3_vl_gets_frame_timestamps_in_its_prompt(tmp_path):
    """Qwen3-VL writes each temporal patch's time into the prompt: our frame indices and fps must get there."""
    model = build_tiny_model("qwen3-vl", tmp_path / "q3")
    spec = resolve_model(model)
    assert spec.family == "qwen3-vl"
    backend = make_backend("transformers", spec, batch_size=2).load()
    assert backend.frame_size(640, 360)[0] % 32 == 0  # 16-pixel patches merged 2 x 2
    frames = np.zeros((4, 64, 96, 3), np.uint8)
    reqs = [Request("a", "x", frames, frame_indices=[0, 5, 10, 15], fps=25.0, clip_frames=20),
            Request("b", "x", frames[:2], frame_indices=[0, 25], fps=25.0, clip_frames=50)]
    ids = backend._inputs(reqs)["input_ids"]
    first, second = (backend.processor.tokenizer.decode(row) for row in ids)
    assert "<0.1 seconds>" in first and "<0.5 seconds>" in first  # mean time of each pair of frames
    assert "<0.5 seconds>" in second and "<0.1 seconds>" not in second
    out = backend.generate(reqs, GenerateOptions(max_new_tokens=4))
    assert set(out) == {"a", "b"} and all(o.num_tokens > 0 for o in out.values())


def test_a_long_thin_video_is_decoded_at_the_processor_size_and_a_too_thin_one_is_bad_input(tiny_qwen, tmp_path):
    from index import synth
    from index.engine import BadInput
    from index.video import iter_frames

    backend = make_backend("transformers", resolve_model(tiny_qwen)).load()
    vp = backend._video_processor()
    w, h = backend.frame_size(32, 640)  # a tall strip: the tiny model's pixel budget once made its width 0
    video = tmp_path / "strip.mp4"
    synth.make_video(video, [synth.ShotSpec(8, seed=1)], size=(32, 640))
    frames = np.stack([f.image for f in iter_frames(video, size=(w, h))])
    assert frames.shape == (8, h, w, 3)
    _, rows, cols = vp(videos=[frames], return_tensors="pt")["video_grid_thw"][0].tolist()
    assert (rows * vp.patch_size, cols * vp.patch_size) == (h, w)  # the processor keeps the decoded size
    with pytest.raises(BadInput, match="200:1"):
        backend.frame_size(8, 2000)
