"""Tiny random encoders for tests and CPU demos, saved with `save_pretrained` so the real `from_pretrained`
path loads them. The tokenizer is a word-level one trained locally with `tokenizers` (no hub access)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

BASE_WORDS = tuple(("a the red green blue yellow white square circle moving left right up down to of and in on "
                   "video shot person car street bike riding walking scene").split())


def make_tiny_t5(path: str, words=(), d_model: int = 32, seed: int = 0, d_ff: int | None = None,
                 num_layers: int = 2) -> str:
    """A random T5 encoder (2 layers) with a word-level tokenizer over `BASE_WORDS + words` (`d_model=4096, d_ff=64`:
    T5-XXL's output size at a tiny cost)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    os.makedirs(path, exist_ok=True)
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"])
    tok.train_from_iterator([" ".join(BASE_WORDS + tuple(words))], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    cfg = T5Config(vocab_size=tok.get_vocab_size(), d_model=d_model, d_kv=8, d_ff=d_ff or 2 * d_model,
                   num_layers=num_layers, num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with torch.random.fork_rng():  # leave the caller's random stream alone
        torch.manual_seed(seed)
        T5EncoderModel(cfg).save_pretrained(path)
    return path


def make_tiny_vae(path: str, latent_channels: int = 4, seed: int = 0) -> str:
    """A random `AutoencoderKL` with a 2x spatial downsample."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=32)
    vae.save_pretrained(path)
    return path


# Tiny configs of the diffusers video VAEs (a few thousand weights each, real architecture otherwise): four
# down blocks as in the released models, so the spatial and temporal compression are the real ones.
TINY_VIDEO_VAES = {
    "cogvideox": ("AutoencoderKLCogVideoX", dict(
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4,
        sample_height=32, sample_width=32)),
    "wan": ("AutoencoderKLWan", dict(
        base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 1.5, 0.5, 1.0])),
    "ltx-video": ("AutoencoderKLLTXVideo", dict(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1), scaling_factor=0.8)),
    "hunyuan-video": ("AutoencoderKLHunyuanVideo", dict(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)),
}


def make_tiny_video_vae(path: str, kind: str, seed: int = 0, **overrides) -> str:
    """A random diffusers video VAE of `TINY_VIDEO_VAES[kind]` (`overrides` change its config), saved to `path`."""
    import diffusers

    name, cfg = TINY_VIDEO_VAES[kind]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = getattr(diffusers, name)(**{**cfg, **overrides})
    vae.save_pretrained(path)
    return path


COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (40, 60, 240), "yellow": (230, 220, 30)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def square_frames(colour: str, direction: str, frames: int = 8, size: int = 32, square: int = 8,
                  rng: np.random.Generator | None = None, jitter: int | None = None) -> np.ndarray:
    """(T, size, size, 3) uint8: a coloured square crossing a dark background in one direction.

    On the axis it does not move along it sits at the centre, shifted by up to +-`jitter` pixels (None: anywhere).
    """
    rng = rng or np.random.default_rng(0)
    dx, dy = DIRECTIONS[direction]
    travel = size - square
    step = travel / max(frames - 1, 1)
    if jitter is None:
        across = int(rng.integers(0, travel + 1))
    else:
        across = travel // 2 + int(rng.integers(-jitter, jitter + 1))
    out = np.full((frames, size, size, 3), 16, np.uint8)
    for k in range(frames):
        along = round(k * step)
        x = along if dx > 0 else travel - along if dx < 0 else across
        y = along if dy > 0 else travel - along if dy < 0 else across
        out[k, y:y + square, x:x + square] = COLOURS[colour]
    return out


def make_square_manifest(out_dir, count: int = 16, frames: int = 8, size: int = 32, fps: float = 8.0,
                         seed: int = 0, square: int | None = None, jitter: int | None = None) -> Path:
    """Up to `count` captioned mp4 clips of moving squares (all colour x direction pairs in turn) + clips.parquet.
    A clip whose frames repeat an earlier one's (the same pair on the same path) is written once: the same bytes
    are the same clip, and a manifest holds each clip once."""
    from index.manifest import write_manifest
    from index.files import file_sha256
    from index.record import Clip
    from index.video import write_video

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pairs = [(c, d) for c in COLOURS for d in DIRECTIONS]
    rows, seen = [], set()
    for i in range(count):
        colour, direction = pairs[i % len(pairs)]
        path = out / f"square_{i:03d}.mp4"
        write_video(path, square_frames(colour, direction, frames, size, square or size // 4, rng, jitter), fps)
        sha = file_sha256(path)
        if sha in seen:
            path.unlink()
            continue
        seen.add(sha)
        clip = Clip.from_range(path.name, sha, 0, frames, 0.0, frames / fps, fps, size, size)
        rows.append({**clip.to_dict(), "caption": f"a {colour} square moving {direction}"})
    return write_manifest(pd.DataFrame(rows), out / "clips.parquet")
