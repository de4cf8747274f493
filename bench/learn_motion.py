"""Does the STDiT learn motion from captions? A CPU benchmark in pixel space.

Synthetic clips of a coloured square moving left/right/up/down across a 16x16 frame in 8 frames (its path
centred +-1 px on the other axis; `--jitter -1` puts it anywhere) are captioned "a {colour} square moving
{direction}". A tiny STDiT is trained on them with the real training script (trainer/train.py, in-process),
then every caption is sampled with several seeds and a tracker measures the square's colour and direction
in each sample. Target: >= 90% of samples move in the captioned direction with the captioned colour.

    python bench/learn_motion.py [--steps 3000] [--out runs/learn_motion] [--plot runs/learn_motion/loss.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.testing import COLOURS, DIRECTIONS, make_square_manifest  # noqa: E402

SIZE, FRAMES = 16, 8


def track(video: np.ndarray) -> tuple[str | None, str | None]:
    """(colour, direction) of the brightest blob in a (T, H, W, 3) uint8 video; None when not found."""
    centres, colours = [], []
    for frame in video.astype(np.float32):
        bright = frame.max(axis=-1) > 100  # the background is dark (16)
        if bright.sum() < 3:
            continue
        ys, xs = np.nonzero(bright)
        centres.append((xs.mean(), ys.mean()))
        colours.append(frame[bright].mean(axis=0))
    if len(centres) < FRAMES // 2:
        return None, None
    rgb = np.mean(colours, axis=0)
    colour = min(COLOURS, key=lambda c: np.linalg.norm(rgb - np.array(COLOURS[c], np.float32)))
    c = np.array(centres)
    dx, dy = np.polyfit(np.arange(len(c)), c[:, 0], 1)[0], np.polyfit(np.arange(len(c)), c[:, 1], 1)[0]
    if max(abs(dx), abs(dy)) < 0.5:  # pixels per frame: it does not move
        return colour, None
    direction = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
    return colour, direction


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/learn_motion", help="run folder (data, checkpoints, samples)")
    p.add_argument("--plot", help="loss curve PNG (default OUT/loss.png)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--clips", type=int, default=128)
    p.add_argument("--seeds", type=int, default=4, help="samples per caption")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--shift", type=float, default=3.0, help="rectified-flow timestep shift (more high-noise steps)")
    p.add_argument("--jitter", type=int, default=1, help="pixels the path may sit off-centre (-1: anywhere)")
    p.add_argument("--time-scale", type=float, default=0.2, help="temporal position-embedding scale")
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)

    import torch

    from trainer import train
    from trainer.sample import generate, load_pipeline

    torch.set_num_threads(1)  # shared CPUs: one thread degrades gracefully under contention
    out = Path(args.out)
    manifest = make_square_manifest(out / "data", count=args.clips, frames=FRAMES, size=SIZE,
                                    jitter=None if args.jitter < 0 else args.jitter)
    cfg = {
        "model": {"size": "STDiT-T/2", "hidden_size": 64, "depth": 4, "num_heads": 4, "patch_size": [1, 4, 4],
                  "class_dropout_prob": 0.1, "time_scale": args.time_scale},
        "vae": {"kind": "pixels"},
        "text": {"kind": "tiny", "path": None, "max_length": 8},
        "diffusion": {"name": "rflow", "shift": args.shift},
        "data": {"buckets": [[FRAMES, SIZE, SIZE]], "frame_interval": 1, "batch_size": 16, "num_workers": 0,
                 "cache": True},
        "optim": {"lr": args.lr, "warmup_steps": 50, "grad_clip": 1.0, "weight_decay": 0.0},
        "train": {"mixed_precision": "no", "ema_decay": 0.995, "seed": 0, "log_every": 25,
                  "ckpt_every": args.steps, "keep_last": 1},
        "sample": {"num_frames": FRAMES, "height": SIZE, "width": SIZE, "fps": 8},
    }
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = out / "run"
    (run / "metrics.jsonl").unlink(missing_ok=True)
    t0 = time.perf_counter()
    train.main(["--config", str(cfg_path), "--data", str(manifest), "--max-steps", str(args.steps),
                "--output-dir", str(run)])
    train_s = time.perf_counter() - t0

    ckpt = train.checkpoints(run)[-1]
    model, vae, text, diffusion, _ = load_pipeline(ckpt)
    captions = [(c, d) for c in COLOURS for d in DIRECTIONS]
    prompts = [f"a {c} square moving {d}" for c, d in captions]
    hits, rows = 0, []
    for seed in range(args.seeds):
        videos = generate(model, vae, text, diffusion, prompts, FRAMES, SIZE, SIZE, args.sample_steps,
                          args.cfg_scale, seed=seed)
        for (colour, direction), video in zip(captions, videos):
            got = track(video)
            ok = got == (colour, direction)
            hits += ok
            rows.append({"seed": seed, "caption": f"{colour} {direction}", "tracked": f"{got[0]} {got[1]}",
                         "ok": bool(ok)})
        if seed == 0:
            from index.video import write_video

            (out / "samples").mkdir(exist_ok=True)
            for (colour, direction), video in zip(captions, videos):
                write_video(out / "samples" / f"{colour}_{direction}.mp4", video, 8)
    total = len(rows)
    accuracy = hits / total

    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    plot = Path(args.plot) if args.plot else out / "loss.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([m["step"] for m in metrics], [m["loss"] for m in metrics])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("rectified-flow loss")
    ax.set_yscale("log")
    ax.set_title(f"learn_motion: {accuracy:.0%} of {total} samples correct")
    fig.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=100)

    wrong = [r for r in rows if not r["ok"]]
    for r in wrong[:10]:
        print(f"  miss: seed {r['seed']} caption '{r['caption']}' tracked '{r['tracked']}'")
    print(f"learn_motion: {hits}/{total} samples correct = {accuracy:.1%} (target >= 90%); "
          f"train {args.steps} steps in {train_s:.0f} s; final loss {metrics[-1]['loss']:.4f}; loss curve {plot}")
    return 0 if accuracy >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
