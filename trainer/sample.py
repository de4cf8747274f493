"""Sample videos from a training checkpoint.

    sample --ckpt RUN/checkpoints/STEP --prompt "a red square moving left" [--prompt-file F]
           [--num-frames T --height H --width W --fps F] [--steps N --cfg-scale S --seed K] -o out.mp4

Uses the EMA weights when the checkpoint has them. One prompt writes OUT; several write OUT_0.mp4, OUT_1.mp4, ...
The same seed gives the same video.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml


def load_pipeline(ckpt: str | Path, device: str = "cpu", use_ema: bool = True):
    """(model, vae, text encoder, diffusion, config) from a checkpoint folder alone."""
    from trainer.diffusion import build_diffusion
    from trainer.encoders import TextEncoder, build_vae
    from trainer.model import STDiT

    ckpt = Path(ckpt)
    cfg_path = ckpt / "config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"{ckpt}: not a training checkpoint (no config.yaml)")
    cfg = yaml.safe_load(cfg_path.read_text())
    weights = ckpt / "ema" if use_ema and (ckpt / "ema").is_dir() else ckpt / "model"
    model = STDiT.from_pretrained(str(weights)).to(device).eval()
    vae_cfg = dict(cfg["vae"])
    vae = build_vae(vae_cfg.pop("kind"), **vae_cfg).to(device)
    text_dir = ckpt / "text_encoder"
    tc = cfg["text"]
    text = TextEncoder(str(text_dir) if text_dir.is_dir() else tc["path"],
                       "t5" if tc["kind"] == "tiny" else tc["kind"], tc["max_length"]).to(device)
    dcfg = dict(cfg["diffusion"])
    return model, vae, text, build_diffusion(dcfg.pop("name"), **dcfg), cfg


@torch.no_grad()
def generate(model, vae, text, diffusion, prompts: list[str], num_frames: int, height: int, width: int,
             steps: int = 30, cfg_scale: float = 4.0, seed: int = 0) -> np.ndarray:
    """(B, T, H, W, 3) uint8 videos, one per prompt; deterministic for a seed."""
    device = next(model.parameters()).device
    y, mask = text(prompts)
    g = torch.Generator().manual_seed(int(seed))
    shape = (len(prompts), vae.channels, num_frames, height // vae.factor, width // vae.factor)
    noise = torch.randn(shape, generator=g).to(device)
    latents = diffusion.sample(model, noise, y, mask, steps=steps, cfg_scale=cfg_scale, generator=g)
    video = vae.decode(latents)  # (B, 3, T, H, W) in [-1, 1]
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


def output_paths(out: str, n: int) -> list[Path]:
    p = Path(out)
    return [p] if n == 1 else [p.with_name(f"{p.stem}_{i}{p.suffix or '.mp4'}") for i in range(n)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Sample videos from an STDiT checkpoint.")
    p.add_argument("--ckpt", required=True, help="RUN/checkpoints/STEP")
    p.add_argument("--prompt", action="append", default=[], help="a caption (repeatable)")
    p.add_argument("--prompt-file", help="one caption per line")
    p.add_argument("--num-frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--fps", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg-scale", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("-o", "--output", required=True, help="out.mp4")
    args = p.parse_args(argv)
    prompts = list(args.prompt)
    if args.prompt_file:
        prompts += [ln.strip() for ln in Path(args.prompt_file).read_text().splitlines() if ln.strip()]
    if not prompts:
        p.error("give --prompt or --prompt-file")
    from index.video import write_video

    try:
        model, vae, text, diffusion, cfg = load_pipeline(args.ckpt, args.device, use_ema=not args.no_ema)
    except (ValueError, RuntimeError, OSError) as err:
        p.error(str(err))
    sc = cfg.get("sample", {})
    pick = lambda v, k, d: v if v is not None else sc.get(k, d)  # noqa: E731
    T, H, W = pick(args.num_frames, "num_frames", 16), pick(args.height, "height", 256), pick(args.width, "width", 256)
    if H % vae.factor or W % vae.factor:
        p.error(f"--height/--width must be multiples of the VAE factor {vae.factor}")
    videos = generate(model, vae, text, diffusion, prompts, T, H, W, pick(args.steps, "steps", 30),
                      pick(args.cfg_scale, "cfg_scale", 4.0), args.seed)
    fps = pick(args.fps, "fps", 8)
    for path, video, prompt in zip(output_paths(args.output, len(prompts)), videos, prompts):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, video, fps)
        print(f"{path}: {prompt!r} ({T}x{H}x{W})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
