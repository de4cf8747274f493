"""Tiny random encoders for tests and CPU demos, saved with `save_pretrained` so the real `from_pretrained`
path loads them. The tokenizer is a word-level one trained locally with `tokenizers` (no hub access)."""

from __future__ import annotations

import os

import torch

BASE_WORDS = tuple(("a the red green blue yellow white square circle moving left right up down to of and in on "
                   "video shot person car street bike riding walking scene").split())


def make_tiny_t5(path: str, words=(), d_model: int = 32, seed: int = 0) -> str:
    """A 2-layer random T5 encoder with a word-level tokenizer over `BASE_WORDS + words`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    os.makedirs(path, exist_ok=True)
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"])
    tok.train_from_iterator([" ".join(BASE_WORDS + tuple(words))], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=tok.get_vocab_size(), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                   num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5EncoderModel(cfg).save_pretrained(path)
    return path


def make_tiny_vae(path: str, latent_channels: int = 4, seed: int = 0) -> str:
    """A random `AutoencoderKL` with a 2x spatial downsample."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=32)
    vae.save_pretrained(path)
    return path
