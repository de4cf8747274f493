"""Embedders: the frame signature on real footage, a tiny CLIP through from_pretrained, the bundled MiniLM."""

from __future__ import annotations

import json

import numpy as np
import pytest

from index import video
from index.dedup.groups import DEFAULT_THRESHOLD
from index.dedup.embed import (HFImageEmbedder, SignatureEmbedder, TextEmbedder, frame_hash, make_visual_embedder)


def _shots(realdata, name):
    cuts = json.loads((realdata / "cuts.json").read_text())[name]
    fps = video.probe(realdata / name).fps
    bounds = [0] + [round(t * fps) for t in cuts["hard"]] + [cuts["frames"]]
    return list(zip(bounds[:-1], bounds[1:])), fps


def test_signature_groups_reencodes_and_trims_and_separates_shots(realdata, tmp_path):
    emb = SignatureEmbedder()
    clips, labels = [], []
    for name in ("bikes.mp4", "cityCC0.mpg"):
        src = realdata / name
        shots, fps = _shots(realdata, name)
        frames = video.read_frames(src, range(shots[-1][1]))
        small = tmp_path / f"{name}.half.mp4"  # a re-encode at half size
        video.write_video(small, frames[:, ::2, ::2], fps)
        for s, (a, b) in enumerate(shots):
            n = b - a
            for path, (x, y) in ((src, (a, b)), (small, (a, b)), (src, (a + n // 5, b - n // 5))):
                clips.append(video.read_frames(path, video.sample_indices(x, y, 8), size=emb.frame_size(0, 0)))
                labels.append(f"{name}:{s}")
    e = emb.embed(clips)
    assert e.shape == (len(clips), emb.dim)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    sims = e @ e.T
    same = np.array(labels)[:, None] == np.array(labels)[None, :]
    off = ~np.eye(len(clips), dtype=bool)
    assert sims[same & off].min() > DEFAULT_THRESHOLD  # re-encoded, resized and trimmed copies
    assert sims[~same].max() < DEFAULT_THRESHOLD - 0.15  # different shots, with a margin


def test_frame_hash_equal_for_identical_frames_only(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    b = a.copy()
    b[:, :16] = 255 - b[:, :16]
    assert frame_hash(a) == frame_hash(a.copy())
    assert frame_hash(a) != frame_hash(b)
    rng = np.random.default_rng(0)  # two different night scenes: no longer one "exact duplicate"
    dark = (rng.random((8, 90, 160, 3)) * 14).astype(np.uint8)
    faint = np.zeros((8, 90, 160, 3), np.uint8)
    faint[:, 30:60, 40:120] = 12
    assert frame_hash(dark) != frame_hash(faint)


def test_signature_resizes_frames_not_decoded_at_its_size():
    rng = np.random.default_rng(1)
    big = rng.integers(0, 255, (3, 64, 96, 3), dtype=np.uint8)
    emb = SignatureEmbedder(num_frames=3)
    e_big = emb.embed([big])
    small = big.reshape(3, 32, 2, 32, 3, 3).astype(np.float32).mean(axis=(2, 4))
    assert float(e_big[0] @ emb.embed([small.astype(np.uint8)])[0]) > 0.99


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("tiny-clip")
    cfg = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 64, "max_position_embeddings": 16},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=12)
    CLIPModel(cfg).eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_hf_image_embedder_loads_a_saved_clip_and_pools_frames(tiny_clip):
    emb = make_visual_embedder(str(tiny_clip), num_frames=4)
    assert isinstance(emb, HFImageEmbedder)
    assert emb.frame_size(640, 360) == (56, 32)  # short side at the processor size, aspect kept
    rng = np.random.default_rng(2)
    clips = [rng.integers(0, 255, (4, 32, 56, 3), dtype=np.uint8) for _ in range(3)]
    e = emb.embed(clips)
    assert e.shape == (3, 12)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(emb.embed(clips[:1])[0], e[0], atol=1e-5)  # batching does not change a clip
    assert emb.describe()["model"] == str(tiny_clip)


def test_missing_model_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as err:
        make_visual_embedder("nobody/no-such-clip-model")
    msg = str(err.value)
    assert "nobody/no-such-clip-model" in msg and "huggingface-cli download" in msg and "\n" not in msg


def test_text_embedder_bundled_minilm_ranks_related_captions():
    text = TextEmbedder()
    assert text.dim == 384
    e = text.embed(["a red car drives down a city street at night", "a car driving on a road in the dark",
                    "a bowl of fruit on a wooden kitchen table", None, ""])
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2
    assert not e[3].any() and not e[4].any()  # no caption: a zero vector, never a match
    np.testing.assert_allclose(np.linalg.norm(e[:3], axis=1), 1.0, rtol=1e-4)
