"""Start from published weights: an Open-Sora 1.0 STDiT checkpoint or a PixArt-alpha DiT checkpoint -> STDiT folder.

    python -m trainer.convert SRC.pth OUT_DIR [--kind auto|opensora|pixart] [--num-heads 16]
        [--space-scale S] [--time-scale T] [--base-size B]

Both originals use the parameter names this model uses, so the mapping is mostly by name:
- the fixed sin-cos buffers (`pos_embed`, `pos_embed_temporal`) are dropped; this model recomputes them, with
  the space/time scale (and PixArt's base size) read back from the buffers, exactly also from fp16/bf16 ones
  (`recover_scale`); a file without a table needs the flag for that scale (never a silent 1.0);
- PixArt's 2D patch embedding becomes a 1-frame 3D one; the temporal attention (absent from PixArt) keeps its
  zero-initialised output projection, so the converted model reproduces the image model frame by frame at step 0.
The sizes (hidden, depth, channels, patch, text length, learned sigma) are read from the tensor shapes.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from fractions import Fraction
from pathlib import Path

import torch

from trainer.config import HelpFormatter
from trainer.model import STDiT, sincos_1d, temporal_pos_embed

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


def _golden(f, lo: float, hi: float, iters: int = 60) -> float:
    """The minimum of a unimodal f on [lo, hi]."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2


def recover_scale(table: torch.Tensor, make, coord_of_row1: float) -> float:
    """The position scale a sin-cos table was made with, exactly when it is a simple fraction.

    `make(scale)` regenerates the table (float32); row 1's lowest-frequency sine channel gives a first
    estimate, a least-squares fit over the whole table refines it, and the simplest fraction whose table,
    cast to the stored dtype, reproduces the stored one within two units of its precision is returned
    (0.5, 2/3, 1.0: fp16 and bf16 tables round too coarsely for a fit alone). Else the fitted value."""
    ref = table.double()
    quarter = ref.shape[1] // 2  # the sine half of a 1D table
    omega = 1.0 / 10000 ** ((quarter - 1) / quarter)
    first = math.asin(max(-1.0, min(1.0, float(ref[1, quarter - 1])))) / omega / coord_of_row1  # = 1 / scale
    if not first > 0:
        raise ValueError("cannot read the position scale from the table (is it a sin-cos table?)")
    err = lambda s: float((make(s).double() - ref).square().mean())  # noqa: E731
    fit = _golden(err, 0.97 / first, 1.03 / first)
    tol = max(2 * torch.finfo(table.dtype).eps, 1e-5)
    for den in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 100, 1000):
        candidate = float(Fraction(fit).limit_denominator(den))
        if candidate > 0 and float((make(candidate).to(table.dtype).double() - ref).abs().max()) <= tol:
            return candidate
    return round(fit, 6)


def read_config(sd: dict, kind: str, num_heads: int | None = None, space_scale: float | None = None,
                time_scale: float | None = None, base_size: int | None = None) -> dict:
    """STDiT config from tensor shapes; the position scales from the sin-cos tables, or from the arguments
    (which win when given). A scale the file has no table for and no argument gives is an error."""
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
    if pos is not None and pos.is_floating_point() and space_scale is None:
        cols = pos.reshape(-1, hidden)[:, : hidden // 2]  # (S, D/2): the column half, tokens row-major
        again = [i for i in range(1, len(cols)) if torch.equal(cols[i], cols[0])]  # column 0 of the next row
        nw = again[0] if again else len(cols)
        if nw < 2:
            raise ValueError("pos_embed has a one-column grid: give --space-scale")
        cfg["space_scale"] = recover_scale(
            cols[:nw], lambda s: sincos_1d(hidden // 2, torch.arange(nw, dtype=torch.float32) / s), 1.0)
    elif space_scale is None:
        raise ValueError("the checkpoint has no position table (pos_embed): give --space-scale (Open-Sora 1.0: "
                         "0.5 for weights trained at 256px, 1.0 at 512px; PixArt-alpha: 1.0 at 256/512px, 2.0 at "
                         "1024px)")
    if space_scale is not None:
        cfg["space_scale"] = float(space_scale)
    if kind == "pixart" and base_size is None and pos is not None:
        base_size = math.isqrt(pos.reshape(-1, hidden).shape[0])  # PixArt's table spans its own (square) grid
    if kind == "pixart":
        if base_size is None:
            raise ValueError("the PixArt checkpoint has no position table (pos_embed): give --base-size (the "
                             "latent grid it was trained on: 32 for PixArt-XL-2-512x512, 64 for -1024-MS)")
        cfg["base_size"] = int(base_size)
    tpos = sd.get("pos_embed_temporal")
    if time_scale is not None:
        cfg["time_scale"] = float(time_scale)
    elif tpos is not None and tpos.reshape(-1, hidden).shape[0] > 1:
        table = tpos.reshape(-1, hidden)
        cfg["time_scale"] = recover_scale(table, lambda s: temporal_pos_embed(hidden, table.shape[0], s), 1.0)
    elif kind == "opensora":
        raise ValueError("the checkpoint has no temporal position table with 2 or more frames "
                         "(pos_embed_temporal): give --time-scale (Open-Sora 1.0: 1.0 for 16 frames, 2/3 for 64)")
    # PixArt is an image model: no temporal table to read; the time scale stays 1.0 unless given
    return cfg


def convert(sd: dict, kind: str = "auto", num_heads: int | None = None, space_scale: float | None = None,
            time_scale: float | None = None, base_size: int | None = None) -> STDiT:
    kind = detect_kind(sd) if kind == "auto" else kind
    if kind not in ("opensora", "pixart"):
        raise ValueError(f"unknown checkpoint kind {kind!r}: opensora or pixart")
    unsupported = [k for k in sd if k.startswith(("csize_embedder", "ar_embedder")) or "rel_pos" in k]
    if unsupported:
        raise ValueError(f"unsupported weights {unsupported[:3]} (PixArt-MS resolution embedders / windowed "
                         "attention); use a PixArt-XL-2-512x512 or -256x256 checkpoint")
    model = STDiT(**read_config(sd, kind, num_heads, space_scale, time_scale, base_size))
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


def scale_arg(text: str) -> float:
    """A position scale on the command line: a number or a fraction ("2/3")."""
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction such as 2/3") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a scale must be > 0")
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Convert Open-Sora 1.0 STDiT / PixArt-alpha weights to an STDiT folder.",
                                formatter_class=HelpFormatter)
    p.add_argument("src", help="checkpoint file (.pth, .pt, .bin or .safetensors)")
    p.add_argument("out", help="output folder (loadable with STDiT.from_pretrained, train.py --init-from, sample)")
    p.add_argument("--kind", default="auto", choices=["auto", "opensora", "pixart"],
                   help="what the file holds; auto: Open-Sora when it has temporal attention, else PixArt")
    p.add_argument("--num-heads", type=int, help="attention heads (default: hidden size / 72)")
    p.add_argument("--space-scale", type=scale_arg,
                   help="spatial position scale (default: read from the file's pos_embed; required without it)")
    p.add_argument("--time-scale", type=scale_arg,
                   help="temporal position scale, e.g. 2/3 (default: read from pos_embed_temporal; required "
                        "for Open-Sora files without it; 1.0 for PixArt)")
    p.add_argument("--base-size", type=int, help="PixArt's base grid size (default: read from pos_embed)")
    args = p.parse_args(argv)
    try:
        model = convert(load_state_dict(args.src), args.kind, args.num_heads, args.space_scale, args.time_scale,
                        args.base_size)
    except ValueError as err:
        print(f"convert: error: {err}", file=sys.stderr)
        return 2
    model.save_pretrained(args.out)
    c = model.config
    print(f"{args.out}: STDiT depth {c.depth}, hidden {c.hidden_size}, heads {c.num_heads}, patch {c.patch_size}, "
          f"space_scale {c.space_scale:.6g}, time_scale {c.time_scale:.6g}, base_size {c.base_size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
