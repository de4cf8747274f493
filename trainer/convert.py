"""Start from published weights: an Open-Sora 1.0 STDiT checkpoint or a PixArt-alpha DiT checkpoint -> STDiT folder.

    python -m trainer.convert SRC.pth OUT_DIR [--kind auto|opensora|pixart] [--num-heads 16]

Both originals use the parameter names this model uses, so the mapping is mostly by name:
- the fixed sin-cos buffers (`pos_embed`, `pos_embed_temporal`) are dropped; this model recomputes them, with
  the space/time scale (and PixArt's base size) read back from the buffers;
- PixArt's 2D patch embedding becomes a 1-frame 3D one; the temporal attention (absent from PixArt) keeps its
  zero-initialised output projection, so the converted model reproduces the image model frame by frame at step 0.
The sizes (hidden, depth, channels, patch, text length, learned sigma) are read from the tensor shapes.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch

from trainer.model import STDiT

WRAPPERS = ("ema", "state_dict", "model", "module")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint file (.pth/.pt/.bin with weights_only=True, or .safetensors) -> flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(sd, dict) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        inner = next((sd[k] for k in WRAPPERS if k in sd and isinstance(sd[k], dict)), None)
        if inner is None:
            raise ValueError(f"{path}: no tensors found (top-level keys {sorted(sd)[:8]})")
        sd = inner
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def detect_kind(sd: dict) -> str:
    if any(".attn_temp." in k for k in sd):
        return "opensora"
    if "x_embedder.proj.weight" in sd and sd["x_embedder.proj.weight"].dim() == 4:
        return "pixart"
    raise ValueError("not an Open-Sora 1.0 STDiT or PixArt-alpha checkpoint (no x_embedder.proj.weight)")


def _inverse_scale(cos_value: float) -> float:
    """Positions are i / scale; the first cos channel of position 1 is cos(1 / scale)."""
    return round(1.0 / math.acos(max(-1.0, min(1.0, cos_value))), 4)


def read_config(sd: dict, kind: str, num_heads: int | None = None) -> dict:
    w = sd["x_embedder.proj.weight"]  # (D, C, pt, ph, pw) or (D, C, ph, pw)
    hidden, in_channels = w.shape[0], w.shape[1]
    patch = tuple(w.shape[2:]) if w.dim() == 5 else (1, *w.shape[2:])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    out = sd["final_layer.linear.weight"].shape[0] // math.prod(patch)
    if num_heads is None:
        if hidden % 72:
            raise ValueError(f"hidden size {hidden}: give --num-heads (the checkpoint does not record it)")
        num_heads = hidden // 72  # DiT/PixArt/Open-Sora use 72-wide heads (1152 / 16)
    cfg = dict(in_channels=in_channels, patch_size=patch, hidden_size=hidden, depth=depth, num_heads=num_heads,
               mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
               caption_channels=sd["y_embedder.y_proj.fc1.weight"].shape[1],
               model_max_length=sd["y_embedder.y_embedding"].shape[0], pred_sigma=out == 2 * in_channels)
    pos = sd.get("pos_embed")
    if pos is not None:  # (1, S, D): recover the scale (and PixArt's base size) the weights were trained with
        cfg["space_scale"] = _inverse_scale(float(pos.reshape(-1, hidden)[1, hidden // 4]))
        if kind == "pixart":
            cfg["base_size"] = int(round(math.sqrt(pos.reshape(-1, hidden).shape[0])))
    tpos = sd.get("pos_embed_temporal")
    if tpos is not None and tpos.reshape(-1, hidden).shape[0] > 1:
        cfg["time_scale"] = _inverse_scale(float(tpos.reshape(-1, hidden)[1, hidden // 2]))
    return cfg


def convert(sd: dict, kind: str = "auto", num_heads: int | None = None) -> STDiT:
    kind = detect_kind(sd) if kind == "auto" else kind
    if kind not in ("opensora", "pixart"):
        raise ValueError(f"unknown checkpoint kind {kind!r}: opensora or pixart")
    unsupported = [k for k in sd if k.startswith(("csize_embedder", "ar_embedder")) or "rel_pos" in k]
    if unsupported:
        raise ValueError(f"unsupported weights {unsupported[:3]} (PixArt-MS resolution embedders / windowed "
                         "attention); use a PixArt-XL-2-512x512 or -256x256 checkpoint")
    model = STDiT(**read_config(sd, kind, num_heads))
    mapped = {k: v for k, v in sd.items() if k not in ("pos_embed", "pos_embed_temporal")}
    w = mapped["x_embedder.proj.weight"]
    if w.dim() == 4:
        mapped["x_embedder.proj.weight"] = w.unsqueeze(2)  # Conv2d -> one-frame Conv3d
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    if kind == "opensora" and missing:
        raise ValueError(f"checkpoint lacks {missing[:4]}")
    if kind == "pixart" and any(".attn_temp." not in k for k in missing):
        raise ValueError(f"checkpoint lacks {[k for k in missing if '.attn_temp.' not in k][:4]}")
    extra = [k for k in mapped if k not in own]
    if extra:
        raise ValueError(f"checkpoint has weights this model does not: {extra[:4]}")
    for k, v in mapped.items():
        if v.shape != own[k].shape:
            raise ValueError(f"{k}: shape {tuple(v.shape)} does not fit {tuple(own[k].shape)}")
    model.load_state_dict(mapped, strict=False)  # PixArt: attn_temp keeps its init (zero output projection)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Convert Open-Sora 1.0 STDiT / PixArt-alpha weights to an STDiT folder.")
    p.add_argument("src", help="checkpoint file (.pth or .safetensors)")
    p.add_argument("out", help="output folder (loadable with STDiT.from_pretrained)")
    p.add_argument("--kind", default="auto", choices=["auto", "opensora", "pixart"])
    p.add_argument("--num-heads", type=int, help="attention heads (default hidden / 72)")
    args = p.parse_args(argv)
    try:
        model = convert(load_state_dict(args.src), args.kind, args.num_heads)
    except ValueError as err:
        p.error(str(err))
    model.save_pretrained(args.out)
    c = model.config
    print(f"{args.out}: STDiT depth {c.depth}, hidden {c.hidden_size}, heads {c.num_heads}, patch {c.patch_size}, "
          f"space_scale {c.space_scale}, time_scale {c.time_scale}, base_size {c.base_size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
