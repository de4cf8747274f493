"""Frozen encoders (tiny random SD-VAE and T5 loaded through from_pretrained) and feature pre-extraction."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.data import BucketSampler, collate, open_dataset
from trainer.encoders import SDVAE, TextEncoder, build_vae
from trainer.extract import FeatureDataset, extract_features
from trainer.testing import make_square_manifest, make_tiny_t5, make_tiny_vae

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    return make_tiny_vae(str(root / "vae")), make_tiny_t5(str(root / "t5"))


def test_sd_vae_frame_by_frame_with_scaling(encoders):
    vae = build_vae("sd-vae", path=encoders[0], micro_batch=3, sample=False)
    assert isinstance(vae, SDVAE) and vae.channels == 4 and vae.factor == 2
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    z = vae.encode(video)
    assert z.shape == (2, 4, 5, 8, 8)
    frame = video[1, :, 3][None]  # one frame alone gives the same latent as inside the micro-batches
    direct = vae.vae.encode(frame).latent_dist.mode() * vae.vae.config.scaling_factor
    assert torch.allclose(z[1, :, 3], direct[0], atol=1e-5)
    out = vae.decode(z)
    assert out.shape == video.shape and out.min() >= -1 and out.max() <= 1
    pixels = build_vae("pixels")
    assert torch.equal(pixels.encode(video), video)


def test_text_encoder_pads_to_a_fixed_length(encoders):
    text = TextEncoder(encoders[1], "t5", max_length=7)
    y, mask = text(["a red square moving left", "blue"])
    assert y.shape == (2, 7, 32) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [5, 1]


def test_missing_models_are_one_line_errors(tmp_path):
    with pytest.raises(RuntimeError, match="cannot load model from folder"):
        build_vae("sd-vae", path=str(tmp_path / "absent-vae"))
    with pytest.raises(RuntimeError, match="cannot load model from folder"):
        TextEncoder(str(tmp_path / "absent-t5"))
    with pytest.raises(ValueError, match="unknown vae"):
        build_vae("vqgan")


@pytest.mark.slow
def test_extracted_features_train_without_reencoding(encoders, tmp_path):
    manifest = make_square_manifest(tmp_path / "data", count=5, frames=4, size=16)
    dataset = open_dataset(manifest)
    sampler = BucketSampler(dataset.shapes(), [[4, 16, 16]], 2, shuffle=False)
    vae = build_vae("sd-vae", path=encoders[0])
    text = TextEncoder(encoders[1], "t5", max_length=8)
    n = extract_features(dataset, sampler, vae, text, tmp_path / "f.safetensors")
    assert n == 5
    feats = open_dataset(tmp_path / "f.safetensors")
    assert isinstance(feats, FeatureDataset) and len(feats) == 5 and feats.shapes()[0] == (4, 16, 16)
    batch = collate([feats[(i, (4, 16, 16))] for i in range(2)])
    assert batch["latents"].shape == (2, 4, 4, 8, 8) and batch["y"].shape == (2, 8, 32)
    expect_y, expect_mask = text([batch["caption"][1]])
    assert torch.allclose(batch["y"][1], expect_y[0]) and torch.equal(batch["mask"][1], expect_mask[0])
    # train on the features with the same (tiny) encoders
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer.train", "--config", str(REPO / "trainer/configs/tiny.yaml"),
           "--data", str(tmp_path / "f.safetensors"), "--max-steps", "2", "--output-dir", str(out),
           "vae.kind=sd-vae", f"vae.path={encoders[0]}", "text.kind=t5", f"text.path={encoders[1]}",
           "text.max_length=8", "data.buckets=[[4,16,16]]", "data.batch_size=2", "model.patch_size=[1,2,2]"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "checkpoints" / "2" / "ema").is_dir()
