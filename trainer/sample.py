"""Sample videos from a training checkpoint, a run, or a converted model folder.

    sample --ckpt RUN | RUN/checkpoints/STEP | MODEL_FOLDER --prompt "a red square moving left" -o out.mp4
    sample --ckpt opensora-v1-16x256x256/ --config trainer/configs/opensora-v1/stage1.yaml --prompt ... -o out.gif

A run folder samples its latest checkpoint; a checkpoint uses its EMA weights and its own config (text encoder,
VAE, diffusion, sample defaults). A model folder without a training config (`python -m trainer.convert`
output) takes them from `--config`, or from `--text-encoder`, `--vae` and `--diffusion`. One prompt writes OUT;
several write OUT_0.mp4, OUT_1.mp4, ... (.mp4 through PyAV, .gif through Pillow). The output path is checked
before anything is loaded. The same seed gives the same video.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from index.engine import ctrl_c_guard, ignore_ctrl_c
from trainer.checkpoints import UsageError, check_hub_model, find_weights
from trainer.config import ConfigError, HelpFormatter, load_config

FORMATS = (".mp4", ".gif")


def resolve_config(ckpt, config=None, text_encoder=None, vae=None, diffusion=None, use_ema: bool = True):
    """(model folder, checkpoint folder or None, config): --config wins over the checkpoint's own config.yaml;
    the flags win over both."""
    found = find_weights(ckpt, use_ema, allow_file=False)
    source = config or (found.checkpoint / "config.yaml" if found.checkpoint is not None else None)
    if source is None and not (text_encoder and vae):
        raise UsageError(f"{found.path} is a model folder without a training config: pass --config (the config "
                         "its weights go with, e.g. trainer/configs/opensora-v1/stage1.yaml) or --text-encoder "
                         "and --vae")
    extra = {}
    if text_encoder:
        extra.update({"text.kind": "t5", "text.path": text_encoder})
    if vae:
        extra.update({"vae.kind": "sd-vae", "vae.path": vae})
    if diffusion:
        extra["diffusion.name"] = diffusion
    return found.path, found.checkpoint, load_config(source, extra=extra)


def load_pipeline(ckpt, device: str = "cpu", use_ema: bool = True, config=None, text_encoder=None, vae=None,
                  diffusion=None):
    """(model, vae, text encoder, diffusion, config)."""
    from trainer.diffusion import build_diffusion
    from trainer.encoders import TextEncoder, build_vae
    from trainer.model import STDiT

    folder, checkpoint, cfg = resolve_config(ckpt, config, text_encoder, vae, diffusion, use_ema)
    tc = cfg["text"]
    own_text = checkpoint / "text_encoder" if checkpoint is not None else None
    text_path = tc["path"] if text_encoder or own_text is None or not own_text.is_dir() else own_text
    if text_path == own_text:
        kind = "t5"
    elif tc["kind"] == "tiny":
        raise UsageError(f"{folder}: its config uses a tiny text encoder saved with the checkpoint: pass "
                         "--text-encoder")
    else:
        kind = tc["kind"]
        check_hub_model(text_path, "text encoder")
    check_hub_model(cfg["vae"].get("path"), "vae")
    model = STDiT.from_pretrained(str(folder)).to(device).eval()
    vae_cfg = dict(cfg["vae"])
    video_vae = build_vae(vae_cfg.pop("kind"), **vae_cfg).to(device)
    text = TextEncoder(str(text_path), kind, tc["max_length"]).to(device)
    dcfg = dict(cfg["diffusion"])
    return model, video_vae, text, build_diffusion(dcfg.pop("name"), **dcfg), cfg


def latent_shape(vae, T: int, H: int, W: int) -> tuple[int, int, int, int]:
    """(C, t, h, w) of the latents of a T x H x W video (a video VAE compresses time too)."""
    if hasattr(vae, "latent_shape"):
        return tuple(vae.latent_shape(T, H, W))
    return vae.channels, T, H // vae.factor, W // vae.factor


@torch.no_grad()
def generate(model, vae, text, diffusion, prompts: list[str], num_frames: int, height: int, width: int,
             steps: int = 30, cfg_scale: float = 4.0, seed: int = 0, cfg_channels: int | None = None) -> np.ndarray:
    """(B, T, H, W, 3) uint8 videos, one per prompt; deterministic for a seed."""
    device = next(model.parameters()).device
    y, mask = text(prompts)
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((len(prompts), *latent_shape(vae, num_frames, height, width)), generator=g).to(device)
    latents = diffusion.sample(model, noise, y, mask, steps=steps, cfg_scale=cfg_scale, generator=g,
                               cfg_channels=cfg_channels)
    video = vae.decode(latents)  # (B, 3, T, H, W) in [-1, 1]
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


def output_paths(out: str, n: int) -> list[Path]:
    """The files to write, checked before any work: a known format, a creatable folder, not a folder itself."""
    p = Path(out)
    if p.suffix.lower() not in FORMATS:
        raise UsageError(f"-o {out}: the output must end in {' or '.join(FORMATS)}")
    paths = [p] if n == 1 else [p.with_name(f"{p.stem}_{i}{p.suffix}") for i in range(n)]
    for path in paths:
        if path.is_dir():
            raise UsageError(f"-o {out}: {path} is a folder")
        ancestor = next(a for a in path.absolute().parents if a.exists())
        if not ancestor.is_dir():
            raise UsageError(f"-o {out}: {ancestor} is a file, not a folder")
        if not os.access(ancestor, os.W_OK):
            raise UsageError(f"-o {out}: {ancestor} is not writable")
    return paths


def encode(video: np.ndarray, fps: float, suffix: str) -> bytes:
    """(T, H, W, 3) uint8 -> the bytes of an mp4 (PyAV) or an animated GIF (Pillow)."""
    if suffix == ".gif":
        from PIL import Image

        frames = [Image.fromarray(f) for f in video]
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                       duration=max(20, round(1000 / fps)))
        return buf.getvalue()
    from index.video import write_video

    return write_video(None, video, fps)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sample", description="Sample videos from an STDiT checkpoint.",
                                formatter_class=HelpFormatter)
    p.add_argument("--ckpt", required=True, help="a run folder (its latest checkpoint), RUN/checkpoints/STEP, or "
                   "a model folder (python -m trainer.convert output; then give --config or the encoders)")
    p.add_argument("--prompt", action="append", default=[], help="a caption (repeatable)")
    p.add_argument("--prompt-file", help="a text file with one caption per line")
    p.add_argument("-o", "--output", required=True, help="out.mp4 or out.gif (several prompts: out_0.mp4, ...)")
    p.add_argument("--config", help="training config for the text encoder, VAE, diffusion and sample defaults "
                   "(default: the checkpoint's own config.yaml)")
    p.add_argument("--text-encoder", help="T5 folder or hub id (default: the config's text.path)")
    p.add_argument("--vae", help="SD-VAE folder or hub id (default: the config's vae)")
    p.add_argument("--diffusion", choices=["rflow", "ddpm"], help="sampler (default: the config's diffusion.name)")
    p.add_argument("--num-frames", type=int, help="frames (default: the config's sample.num_frames)")
    p.add_argument("--height", type=int, help="pixels (default: sample.height)")
    p.add_argument("--width", type=int, help="pixels (default: sample.width)")
    p.add_argument("--fps", type=float, help="frame rate of the file (default: sample.fps)")
    p.add_argument("--steps", type=int, help="sampling steps (default: sample.steps)")
    p.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default: sample.cfg_scale)")
    p.add_argument("--cfg-channels", type=int, help="guide only the first N latent channels, the rest "
                   "conditional, as DiT's sampler (default: sample.cfg_channels, or all channels)")
    p.add_argument("--seed", type=int, default=0, help="noise seed: the same seed gives the same video")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return p


def main(argv=None) -> int:
    with ctrl_c_guard(argv):
        try:
            return run(build_parser().parse_args(argv))
        except (UsageError, ConfigError) as e:
            print(f"sample: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            ignore_ctrl_c()  # a second one must not break the exit with a traceback
            print("sample: interrupted; videos already reported as written are kept", file=sys.stderr)
            return 130


def run(args) -> int:
    from index.files import atomic_write_bytes

    prompts = list(args.prompt)
    if args.prompt_file:
        if not Path(args.prompt_file).is_file():
            raise UsageError(f"--prompt-file {args.prompt_file}: no such file")
        prompts += [ln.strip() for ln in Path(args.prompt_file).read_text().splitlines() if ln.strip()]
    if not prompts:
        raise UsageError("give --prompt or --prompt-file")
    paths = output_paths(args.output, len(prompts))
    folder, _, cfg = resolve_config(args.ckpt, args.config, args.text_encoder, args.vae, args.diffusion,
                                    not args.no_ema)
    sc = cfg["sample"]
    pick = lambda v, k: v if v is not None else sc[k]  # noqa: E731
    T, H, W = pick(args.num_frames, "num_frames"), pick(args.height, "height"), pick(args.width, "width")
    steps, fps = pick(args.steps, "steps"), pick(args.fps, "fps")
    for name, value in (("--num-frames", T), ("--height", H), ("--width", W), ("--steps", steps), ("--fps", fps)):
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{name} must be > 0, got {value}")
    if not math.isfinite(pick(args.cfg_scale, "cfg_scale")):
        raise UsageError(f"--cfg-scale must be a number, got {args.cfg_scale}")
    model, vae, text, diffusion, cfg = load_pipeline(args.ckpt, args.device, not args.no_ema, args.config,
                                                     args.text_encoder, args.vae, args.diffusion)
    if H % vae.factor or W % vae.factor:
        raise UsageError(f"--height/--width must be multiples of the VAE factor {vae.factor}")
    channels = pick(args.cfg_channels, "cfg_channels")
    if channels is not None and not 0 < channels <= vae.channels:
        raise UsageError(f"--cfg-channels must be in 1..{vae.channels} (the latent channels), got {channels}")
    print(f"sampling {folder} ({len(prompts)} prompt(s), {T}x{H}x{W}, {steps} steps)", file=sys.stderr)
    videos = generate(model, vae, text, diffusion, prompts, T, H, W, steps, pick(args.cfg_scale, "cfg_scale"),
                      args.seed, channels)
    for path, video, prompt in zip(paths, videos, prompts):
        atomic_write_bytes(path, encode(video, fps, path.suffix.lower()))
        print(f"{path}: {prompt!r} ({video.shape[0]}x{H}x{W})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
