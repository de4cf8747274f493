"""Model-based scorers with tiny random models saved to a folder and loaded through the real loading code:
aesthetic equals the LAION predictor's formula computed here independently, text_match the CLIP cosine,
nsfw the classifier's probability; a model that is not here is one line and exit status 2; RAFT by path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from index import synth
from index.manifest import read_manifest, write_manifest
from index.video import read_frames
from scorer.aesthetic import AestheticScorer, load_head
from scorer.base import ClipFrames, decode_size, fit
from scorer.cli import main
from scorer.flow import DISFlow, RAFTFlow, make_flow
from scorer.match import TextMatchScorer
from scorer.models import ModelError
from scorer.nsfw import NsfwScorer
from scorer.registry import select_scorers
from scorer.stage import plan_frames

from test_scorer_engine import windows

HEAD = "sac+logos+ava1-l14-linearMSE.pth"


def _tokenizer(folder: Path):
    """A CLIP BPE tokenizer over single letters (no merges), written as vocab.json + merges.txt."""
    from transformers import CLIPTokenizer

    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
    vocab |= {f"{c}</w>": len(vocab) + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")), vocab


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A random CLIP (projection 12) with its processor, and a random aesthetic head in the original layout."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    work = tmp_path_factory.mktemp("tok")
    folder = tmp_path_factory.mktemp("tiny-clip")
    tok, vocab = _tokenizer(work)
    end = vocab["<|endoftext|>"]
    cfg = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": len(vocab), "max_position_embeddings": 32, "bos_token_id": end - 1,
                     "eos_token_id": end, "pad_token_id": end},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=12)
    CLIPModel(cfg).eval().save_pretrained(folder)
    image = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(folder)
    head = torch.nn.Sequential(torch.nn.Linear(12, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                               torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                               torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, folder / HEAD)  # the published keys
    return folder


def laion_formula(folder: Path, frames: np.ndarray) -> float:
    """The predictor as published, computed here without the scorer's code: CLIP image embedding, L2-normalised,
    through the five linear layers (no activations), mean over the frames."""
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    pixels = CLIPImageProcessor.from_pretrained(folder)(images=list(frames), return_tensors="pt")["pixel_values"]
    with torch.no_grad():  # the full forward (a dummy text beside): the image tower and its projection
        x = model(input_ids=torch.zeros(1, 2, dtype=torch.long), pixel_values=pixels).image_embeds
    x = x / x.norm(dim=-1, keepdim=True)
    state = torch.load(folder / HEAD, weights_only=True)
    for layer in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{layer}.weight"].T + state[f"layers.{layer}.bias"]
    return float(x.mean())


def clip_cosine(folder: Path, caption: str, frames: np.ndarray) -> float:
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder).eval()
    inputs = CLIPProcessor.from_pretrained(folder)(text=[caption], images=list(frames), return_tensors="pt",
                                                   padding=True)
    with torch.no_grad():
        out = model(**inputs)
    text = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    image = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    return float((image @ text[0]).mean())


def frames_clip(n: int = 5, seed: int = 0, caption: str | None = None) -> ClipFrames:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (n, 48, 80, 3), dtype=np.uint8)
    return ClipFrames(clip={"clip_id": f"c{seed}", "caption": caption}, frames=frames, indices=np.arange(n),
                      after=frames[:0], pair_of=np.zeros(0, np.int64))


def test_aesthetic_is_the_laion_formula_on_first_middle_last(tiny_clip):
    scorer = AestheticScorer(str(tiny_clip))  # head: found in the model folder
    scorer.check()
    clips = [frames_clip(5, seed) for seed in range(3)]
    got = [r["aesthetic"] for r in scorer.load().score_batch(clips)]
    want = [laion_formula(tiny_clip, c.frames[[0, 2, 4]]) for c in clips]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert len(set(np.round(got, 6))) == 3


def test_aesthetic_head_refuses_another_layout(tmp_path):
    torch.save({"fc.weight": torch.zeros(1, 4)}, tmp_path / "other.pth")
    with pytest.raises(ModelError, match="not an aesthetic predictor head"):
        load_head(tmp_path / "other.pth")


def test_text_match_is_the_clip_cosine_and_nan_without_caption(tiny_clip):
    scorer = TextMatchScorer(str(tiny_clip)).load()
    clips = [frames_clip(5, 1, "a red kite over the sea"), frames_clip(3, 2, None), frames_clip(4, 3, "dog")]
    got = [r["text_match"] for r in scorer.score_batch(clips)]
    assert np.isnan(got[1])
    assert got[0] == pytest.approx(clip_cosine(tiny_clip, "a red kite over the sea", clips[0].frames[[0, 2, 4]]),
                                   abs=1e-5)
    assert got[2] == pytest.approx(clip_cosine(tiny_clip, "dog", clips[2].frames[[0, 2, 3]]), abs=1e-5)
    long = scorer.score(frames_clip(3, 5, "a very long caption " * 20))["text_match"]  # past the 32-token window
    assert np.isfinite(long)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("tiny-nsfw")
    cfg = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32,
                    patch_size=8, num_labels=2, id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1})
    ViTForImageClassification(cfg).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_nsfw_is_the_unsafe_probability_max_over_frames(tiny_classifier):
    from transformers import ViTForImageClassification, ViTImageProcessor

    scorer = NsfwScorer(str(tiny_classifier))
    scorer.check()
    clip = frames_clip(5, 4)
    got = scorer.load().score(clip)["nsfw"]
    model = ViTForImageClassification.from_pretrained(tiny_classifier).eval()
    pixels = ViTImageProcessor.from_pretrained(tiny_classifier)(images=list(clip.frames[[0, 2, 4]]),
                                                                 return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = model(pixel_values=pixels).logits.softmax(-1)[:, 1].max()
    assert got == pytest.approx(float(want), abs=1e-6) and 0 < got < 1


def test_a_classifier_without_an_unsafe_label_is_refused(tiny_classifier, tmp_path):
    cfg = json.loads((tiny_classifier / "config.json").read_text())
    cfg["id2label"], cfg["label2id"] = {"0": "cat", "1": "dog"}, {"cat": 0, "dog": 1}
    other = tmp_path / "pets"
    other.mkdir()
    for f in tiny_classifier.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="cat, dog"):
        NsfwScorer(str(other)).check()


@pytest.fixture(scope="module")
def captioned(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("captioned")
    shots, trans = synth.sample_layout(300, seconds=2.0)
    synth.make_video(folder / "v.mp4", shots, trans, size=(160, 96))
    df = pd.DataFrame(windows(folder / "v.mp4")[:2])
    df["caption"] = ["a red square moves", None]
    write_manifest(df, folder / "clips.parquet")
    return folder


def test_score_clips_runs_the_models_on_the_decoded_frames(captioned, tiny_clip, tiny_classifier):
    out = captioned / "out"
    assert main([str(captioned / "clips.parquet"), "-o", str(out), "--quiet", "--scorers", "aesthetic,text_match",
                 "--aesthetic-model", str(tiny_clip), "--match-model", str(tiny_clip),
                 "--nsfw-model", str(tiny_classifier)]) == 0
    df = read_manifest(out / "clips.parquet")
    assert list(df.columns[-3:]) == ["aesthetic", "text_match", "nsfw"] and "motion" not in df.columns
    row = df.iloc[0]
    sampled, _, _ = plan_frames(row.to_dict(), 2.0)
    w, h = row["width"], row["height"]  # 160x96: decoded at its own size, scaled up to 256 after, as the stage does
    frames = fit(read_frames(row["video_path"], sampled, size=decode_size(w, h, upscale=False)), decode_size(w, h))
    key = frames[[0, len(frames) // 2, len(frames) - 1]] if len(frames) > 3 else frames
    assert row["aesthetic"] == pytest.approx(laion_formula(tiny_clip, key), abs=1e-4)
    assert row["text_match"] == pytest.approx(clip_cosine(tiny_clip, row["caption"], key), abs=1e-4)
    assert np.isnan(df.iloc[1]["text_match"]) and df["nsfw"].between(0, 1).all()


def test_default_scorers_take_models_only_when_they_are_here(tiny_clip, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    names = [s.name for s in select_scorers("default", has_caption=True, aesthetic_model=str(tiny_clip),
                                            match_model=str(tiny_clip))]
    assert names == ["motion", "camera_motion", "sharpness", "brightness", "text_area", "bpp", "aesthetic",
                     "text_match"]
    names = [s.name for s in select_scorers("default", has_caption=False, aesthetic_model="nobody/no-clip")]
    assert names == ["motion", "camera_motion", "sharpness", "brightness", "text_area", "bpp"]
    assert [s.name for s in select_scorers("black_frac,text_static", has_caption=False)] == ["brightness",
                                                                                             "text_area"]
    with pytest.raises(ValueError, match="caption column"):
        select_scorers("text_match", has_caption=False)
    with pytest.raises(ValueError, match="unknown scorer 'blur'"):
        select_scorers("motion,blur", has_caption=False)


def test_a_requested_model_not_here_is_one_line_before_any_work(captioned, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    code = main([str(captioned / "clips.parquet"), "-o", str(out), "--scorers", "motion,aesthetic",
                 "--aesthetic-model", "nobody/no-such-clip"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "nobody/no-such-clip" in err and "hf download" in err
    assert not out.exists()


def test_raft_loads_a_torchvision_state_dict_by_path(tmp_path):
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    torch.save(raft_small(weights=None).state_dict(), tmp_path / "raft_small.pth")
    assert isinstance(make_flow(str(tmp_path / "raft_small.pth")), RAFTFlow) and isinstance(make_flow(None), DISFlow)
    flow = RAFTFlow(tmp_path / "raft_small.pth", device="cpu", updates=2).load()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (1, 130, 140), dtype=np.uint8)  # RAFT needs 128 px or more a side
    out = flow(a, np.roll(a, 2, axis=2))
    assert out.shape == (1, 130, 140, 2) and np.isfinite(out).all()
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a torchvision RAFT"):
        RAFTFlow(tmp_path / "other.pth").load()


def test_default_plus_a_model_scorer_adds_it_to_the_defaults():
    from scorer.registry import OFFLINE, parse_names

    assert parse_names("default,aesthetic") == ["default", "aesthetic"]
    assert parse_names("default") == "default" and parse_names("motion,default") == ["default", "motion"]
    assert set(OFFLINE) >= {"motion", "sharpness"}
