"""Frozen encoders: tiny random SD-VAE, video VAEs (CogVideoX, Wan, LTX-Video, HunyuanVideo) and T5, each saved
with save_pretrained and loaded back through the real from_pretrained path."""

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from index import hub
from trainer.encoders import SDVAE, TextEncoder, VideoVAE, build_text_encoder, build_vae
from trainer.testing import TINY_VIDEO_VAES, make_tiny_t5, make_tiny_vae, make_tiny_video_vae

# (channels, spatial factor, time factor, frame step) of each architecture: the released models' compression
GEOMETRY = {"cogvideox": (4, 8, 4, 8), "wan": (4, 8, 4, 4), "ltx-video": (4, 32, 8, 8), "hunyuan-video": (4, 8, 4, 4)}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    return make_tiny_vae(str(root / "vae")), make_tiny_t5(str(root / "t5"))


@pytest.fixture(scope="module")
def video_vaes(tmp_path_factory):
    root = tmp_path_factory.mktemp("video-vaes")
    return {kind: make_tiny_video_vae(str(root / kind), kind) for kind in TINY_VIDEO_VAES}


def test_sd_vae_frame_by_frame_with_scaling(encoders):
    vae = build_vae("sd-vae", path=encoders[0], micro_batch=3, sample=False)
    assert isinstance(vae, SDVAE) and vae.channels == 4 and vae.factor == 2 and vae.time_factor == 1
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    z = vae.encode(video)
    assert z.shape == (2, *vae.latent_shape(5, 16, 16)) == (2, 4, 5, 8, 8)
    frame = video[1, :, 3][None]  # one frame alone gives the same latent as inside the micro-batches
    direct = vae.vae.encode(frame).latent_dist.mode() * vae.vae.config.scaling_factor
    assert torch.allclose(z[1, :, 3], direct[0], atol=1e-5)
    out = vae.decode(z)
    assert out.shape == video.shape and out.min() >= -1 and out.max() <= 1
    pixels = build_vae("pixels")
    assert torch.equal(pixels.encode(video), video) and pixels.latent_shape(5, 16, 16) == (3, 5, 16, 16)


@pytest.mark.parametrize("kind", sorted(TINY_VIDEO_VAES))
def test_video_vae_round_trip_shapes_and_normalisation(kind, video_vaes):
    path = video_vaes[kind]
    vae = build_vae(kind, path=path, sample=False)
    assert isinstance(vae, VideoVAE)
    assert (vae.channels, vae.factor, vae.time_factor, vae.frame_step) == GEOMETRY[kind]
    C, f, tf, step = GEOMETRY[kind]
    T, H, W = 1 + 2 * step, 2 * f, f  # two frame steps; non-square
    assert vae.latent_shape(T, H, W) == (C, 1 + 2 * step // tf, 2, 1)
    assert vae.latent_shape(1, H, W)[1] == 1  # a single image is one latent frame
    video = torch.rand(2, 3, T, H, W) * 2 - 1
    z = vae.encode(video)
    assert z.shape == (2, *vae.latent_shape(T, H, W))
    assert vae.video_frames(z.shape[2]) == T
    out = vae.decode(z)
    assert out.shape == video.shape and out.min() >= -1 and out.max() <= 1
    # latents are normalised as the model's pipeline does: from the config file, not from the wrapper
    cfg = json.loads((Path(path) / "config.json").read_text())
    mean = torch.tensor(cfg.get("latents_mean") or [0.0] * C).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.get("latents_std") or [1.0] * C).view(1, -1, 1, 1, 1)
    scale = cfg.get("scaling_factor") or 1.0
    raw = vae.vae.encode(video).latent_dist.mode()
    assert torch.allclose(z, (raw - mean) * scale / std, atol=1e-5)
    assert torch.allclose(out, vae.vae.decode(raw).sample.clamp(-1, 1), atol=1e-4)


@pytest.mark.parametrize("kind", sorted(TINY_VIDEO_VAES))
def test_video_vae_refuses_frame_counts_it_cannot_take(kind, video_vaes):
    vae = build_vae(kind, path=video_vaes[kind])
    step, f = vae.frame_step, vae.factor
    hint = rf"takes {step}k\+1 frames, not {2 * step} \(use {step + 1} or {2 * step + 1}\)"
    with pytest.raises(ValueError, match=hint):
        vae.latent_shape(2 * step, f, f)
    with pytest.raises(ValueError, match=f"divisible by {f}"):
        vae.encode(torch.zeros(1, 3, 1, f + 4, f))
    assert [n for n in range(1, 18) if vae.valid_frames(n)] == list(range(1, 18, step))


def test_slicing_gives_the_same_latents_and_tiling_reaches_the_model(video_vaes):
    path = video_vaes["hunyuan-video"]
    video = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    plain = build_vae("hunyuan-video", path=path, sample=False)
    sliced = build_vae("hunyuan-video", path=path, sample=False, slicing=True)
    assert sliced.vae.use_slicing and not plain.vae.use_slicing
    assert torch.allclose(sliced.encode(video), plain.encode(video), atol=1e-5)  # one video at a time: exact
    tiles = {"tile_sample_min_height": 16, "tile_sample_min_width": 16,
             "tile_sample_stride_height": 8, "tile_sample_stride_width": 8}
    tiled = build_vae("hunyuan-video", path=path, sample=False, tiling=tiles, framewise=False)
    assert tiled.vae.use_tiling and tiled.vae.tile_sample_min_height == 16 and not tiled.vae.use_framewise_encoding
    z = tiled.encode(video)  # 32 px frames in 16 px tiles
    assert z.shape == plain.encode(video).shape and tiled.decode(z).shape == video.shape


def test_ltx_decoder_with_timestep_conditioning(tmp_path):
    path = make_tiny_video_vae(str(tmp_path / "ltx"), "ltx-video", timestep_conditioning=True)
    vae = build_vae("ltx-video", path=path, decode_timestep=0.05)
    z = vae.encode(torch.rand(1, 3, 9, 32, 32) * 2 - 1)
    assert vae.decode(z).shape == (1, 3, 9, 32, 32)


def test_text_encoder_pads_to_a_fixed_length(encoders):
    text = TextEncoder(encoders[1], "t5", max_length=7)
    y, mask = text(["a red square moving left", "blue"])
    assert y.shape == (2, 7, 32) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [5, 1]


def test_build_text_encoder_builds_a_tiny_one_once(tmp_path):
    path, kind = build_text_encoder({"kind": "tiny"}, tmp_path)
    assert kind == "t5" and Path(path) == tmp_path / "text_encoder"
    assert (tmp_path / "text_encoder/config.json").is_file()
    stamp = (tmp_path / "text_encoder/config.json").stat().st_mtime_ns
    assert build_text_encoder({"kind": "tiny"}, tmp_path)[0] == path
    assert (tmp_path / "text_encoder/config.json").stat().st_mtime_ns == stamp
    assert build_text_encoder({"kind": "t5", "path": "some/t5"}, tmp_path) == ("some/t5", "t5")
    with pytest.raises(ValueError, match="text.path is required"):
        build_text_encoder({"kind": "clip"}, tmp_path)


def test_missing_models_are_one_line_errors(tmp_path, video_vaes):
    with pytest.raises(RuntimeError, match="cannot load model from folder"):
        build_vae("sd-vae", path=str(tmp_path / "absent-vae"))
    with pytest.raises(RuntimeError, match="cannot load model from folder"):
        build_vae("wan", path=str(tmp_path / "absent-vae"))
    with pytest.raises(RuntimeError, match="cannot load model from folder"):
        TextEncoder(str(tmp_path / "absent-t5"))
    with pytest.raises(ValueError, match="unknown vae"):
        build_vae("vqgan")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['tile'\] for vae 'wan'"):
        build_vae("wan", path=video_vaes["wan"], tile=True)
    with pytest.raises(ValueError, match="holds a AutoencoderKLWan, not a AutoencoderKLCogVideoX: use vae.kind=wan"):
        build_vae("cogvideox", path=video_vaes["wan"])  # its weights would otherwise load as random ones


def test_missing_hub_vae_offline_is_the_hub_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # an empty cache
    for kind in ("wan", "sd-vae"):
        with pytest.raises(RuntimeError) as err:
            build_vae(kind, path="nobody/no-such-vae")
        assert str(err.value) == hub.missing_model_message("nobody/no-such-vae")
