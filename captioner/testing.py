"""Tiny random video-language models for tests, demos and benchmarks, built offline.

`build_tiny_model(kind, folder)` trains a small byte-level BPE tokenizer with `tokenizers`, adds the family's
special tokens and a chat template, wraps it in the family's real processor class and saves a 2-layer random
model next to it with `save_pretrained`. The folder then loads through the same `from_pretrained` path a real
checkpoint uses. The captions such a model writes are random words: real captions need real weights.
"""

from __future__ import annotations

import os
import string

import torch

KINDS = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl", "llava-onevision")

# Words the tokenizer learns whole, so a random model writes (random) words rather than byte soup.
CORPUS_WORDS = ("a the video shows shot camera pans slowly quickly left right up down red green blue yellow "
                "white square circle shape moving across background scene person car street bike riding "
                "walking close wide view light dark bright colour texture motion static frame seconds "
                "describe detail style objects actions in on of and with to from is are at").split()

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
LLAVA_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

# The chat templates follow the families' conventions: a user turn holding the visual then the text.
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<video>\n{% elif c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer(special: list[str], vocab_size: int = 420):
    """Byte-level BPE over printable ASCII plus the corpus words (so every prompt encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [" ".join(CORPUS_WORDS)] * 4 + [" ".join(string.printable.strip()), "user assistant system"]
    tok.train_from_iterator(text, trainer=trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="left")
    return fast, {t: tok.token_to_id(t) for t in special}


def _text_config(vocab: int, ids: dict, hidden: int, layers: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])


def _build_qwen(kind: str, folder: str, hidden: int, layers: int):
    from transformers import Qwen2VLImageProcessor

    tok, ids = _tokenizer(QWEN_SPECIAL)
    pixels = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    text = _text_config(len(tok), ids, hidden, layers)
    half = hidden // 4 // 2  # rotary pairs per head (4 heads); M-RoPE splits them over (time, height, width)
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope}
    vision = dict(depth=layers, num_heads=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if kind == "qwen2-vl":
        from transformers import Qwen2VLConfig as Config
        from transformers import Qwen2VLForConditionalGeneration as Model
        from transformers import Qwen2VLProcessor as Processor
        from transformers import Qwen2VLVideoProcessor as VideoProcessor
        vision.update(embed_dim=hidden, hidden_size=hidden, mlp_ratio=2)
    elif kind == "qwen2.5-vl":
        from transformers import Qwen2_5_VLConfig as Config
        from transformers import Qwen2_5_VLForConditionalGeneration as Model
        from transformers import Qwen2_5_VLProcessor as Processor
        from transformers import Qwen2VLVideoProcessor as VideoProcessor
        vision.update(hidden_size=hidden, out_hidden_size=hidden, intermediate_size=2 * hidden,
                      fullatt_block_indexes=[layers - 1], window_size=56)
    else:  # qwen3-vl: 16-pixel patches, timestamps written into the prompt, deepstack features
        from transformers import Qwen3VLConfig as Config
        from transformers import Qwen3VLForConditionalGeneration as Model
        from transformers import Qwen3VLProcessor as Processor
        from transformers import Qwen3VLVideoProcessor as VideoProcessor
        text.update(head_dim=hidden // 4)
        text["rope_parameters"]["mrope_interleaved"] = True
        vision.update(patch_size=16, hidden_size=hidden, intermediate_size=2 * hidden, out_hidden_size=hidden,
                      num_position_embeddings=64, deepstack_visual_indexes=[layers - 1])
        pixels = dict(size={"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 16}, patch_size=16)
    processor = Processor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tok,
                          video_processor=VideoProcessor(**pixels, cap_pixels_per_frame=True),
                          chat_template=QWEN_TEMPLATE)
    return processor, Model(Config(text_config=text, vision_config=vision, **tokens)), ids


def _build_llava_onevision(folder: str, hidden: int, layers: int):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor)

    tok, ids = _tokenizer(LLAVA_SPECIAL)
    side = 28  # 2 x 2 patches of 14 pixels per frame
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, image_size=side, patch_size=14)
    cfg = LlavaOnevisionConfig(text_config=dict(_text_config(len(tok), ids, hidden, layers), model_type="qwen2"),
                               vision_config=dict(vision, model_type="siglip_vision_model"),
                               image_token_index=ids["<image>"], video_token_index=ids["<video>"],
                               vision_feature_layer=-1, vision_feature_select_strategy="full",
                               image_grid_pinpoints=[[side, side]])
    size = {"height": side, "width": side}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[side, side]]),
        tokenizer=tok, video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(side // 14) ** 2, vision_feature_select_strategy="full", chat_template=LLAVA_TEMPLATE)
    return processor, LlavaOnevisionForConditionalGeneration(cfg), ids


def build_tiny_model(kind: str, folder, hidden: int = 32, layers: int = 2, seed: int = 0) -> str:
    """Save a tiny random `kind` model (one of KINDS) and its processor to `folder`; returns the folder."""
    if kind not in KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; choose from {', '.join(KINDS)}")
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    if kind == "llava-onevision":
        processor, model, ids = _build_llava_onevision(folder, hidden, layers)
    else:
        processor, model, ids = _build_qwen(kind, folder, hidden, layers)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    processor.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder
