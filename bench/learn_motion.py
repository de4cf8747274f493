"""Does the STDiT learn motion from captions? A CPU benchmark in pixel space, over seeds and thread counts.

Synthetic clips of a coloured square moving left/right/up/down across a 16x16 frame in 8 frames (its path
centred +-1 px on the other axis; `--jitter -1` puts it anywhere) are captioned "a {colour} square moving
{direction}". A tiny STDiT is trained on them by the real trainer (`python -m trainer.train`, one process per
run, OMP_NUM_THREADS = the run's threads), then every caption is sampled with several seeds from the EMA
weights and a tracker measures the square's colour and direction in each sample. Target: >= 90 % of the
samples have the captioned colour and direction, in every run. Baseline: chance, 1/16 (4 colours x 4
directions); `--control` adds, per jitter, one run whose captions are shuffled across the clips (the same
data and steps, no information in the caption), which should stay near chance.

    python bench/learn_motion.py                          # the matrix: seeds 0 1 2 x threads 1 2 x jitter 1 -1
    python bench/learn_motion.py --seeds 0 --threads 2 --jitter 1          # one run (about 5 min on 2 cores)

Each run's figure is printed as it ends, then a table (min, median, max per jitter and over all runs); the
plot (OUT/loss.png) shows every run's loss curve with the trainer's loss-spike warnings marked.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.testing import COLOURS, DIRECTIONS, make_square_manifest  # noqa: E402

SIZE, FRAMES = 16, 8
CAPTIONS = [(c, d) for c in COLOURS for d in DIRECTIONS]


def track(video: np.ndarray) -> tuple[str | None, str | None]:
    """(colour, direction) of the bright blob in a (T, H, W, 3) uint8 video; None when not found."""
    centres, colours = [], []
    for frame in video.astype(np.float32):
        bright = frame.max(axis=-1) > 100  # the background is dark (16)
        if bright.sum() < 3:
            continue
        ys, xs = np.nonzero(bright)
        centres.append((xs.mean(), ys.mean()))
        colours.append(frame[bright].mean(axis=0))
    if len(centres) < len(video) // 2:
        return None, None
    rgb = np.mean(colours, axis=0)
    colour = min(COLOURS, key=lambda c: np.linalg.norm(rgb - np.array(COLOURS[c], np.float32)))
    c = np.array(centres)
    dx, dy = np.polyfit(np.arange(len(c)), c[:, 0], 1)[0], np.polyfit(np.arange(len(c)), c[:, 1], 1)[0]
    if max(abs(dx), abs(dy)) < 0.5:  # pixels per frame: it does not move
        return colour, None
    direction = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
    return colour, direction


def make_data(out: Path, clips: int, jitter: int, shuffle: bool = False) -> Path:
    """The clips manifest; `shuffle`: the same clips with their captions permuted (the control)."""
    manifest = make_square_manifest(out, count=clips, frames=FRAMES, size=SIZE, jitter=None if jitter < 0 else jitter)
    if shuffle:
        import pandas as pd

        from index.manifest import write_manifest

        rows = pd.read_parquet(manifest)
        rows["caption"] = rows["caption"].to_numpy()[np.random.default_rng(0).permutation(len(rows))]
        manifest = write_manifest(rows, out / "clips_shuffled.parquet")
    return manifest


def task_config(steps: int, seed: int, lr: float = 3e-3, schedule: str = "cosine", warmup: int = 50,
                depth: int = 4, hidden: int = 64, batch: int = 16, log_every: int = 25, time_scale: float = 0.2,
                shift: float = 3.0, conditioning: str = "cross_attn") -> dict:
    return {
        "model": {"size": "STDiT-T/2", "hidden_size": hidden, "depth": depth, "num_heads": 4,
                  "patch_size": [1, 4, 4], "class_dropout_prob": 0.1, "time_scale": time_scale,
                  "conditioning": conditioning},
        "vae": {"kind": "pixels"},
        "text": {"kind": "tiny", "path": None, "max_length": 8},
        "diffusion": {"name": "rflow", "shift": shift},
        "data": {"buckets": [[FRAMES, SIZE, SIZE]], "frame_interval": 1, "batch_size": batch, "num_workers": 0,
                 "cache": True},
        "optim": {"lr": lr, "warmup_steps": warmup, "schedule": schedule, "min_lr_ratio": 0.0, "grad_clip": 1.0,
                  "weight_decay": 0.0},
        "train": {"mixed_precision": "no", "ema_decay": 0.995, "seed": seed, "log_every": log_every,
                  "ckpt_every": steps, "keep_last": 1, "max_steps": steps},
        "sample": {"num_frames": FRAMES, "height": SIZE, "width": SIZE, "fps": 8},
    }


def train_run(cfg: dict, manifest: Path, run: Path, threads: int) -> float:
    """Train with the real command in its own process on `threads` threads; seconds taken."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.in.yaml").write_text(yaml.safe_dump(cfg))
    (run / "metrics.jsonl").unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "trainer.train", "--config", str(run / "config.in.yaml"), "--data",
                           str(manifest), "--output-dir", str(run / "run")], env=env, cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    warnings = [ln for ln in proc.stderr.splitlines() if "warning: loss spike" in ln]
    (run / "warnings.txt").write_text("".join(ln + "\n" for ln in warnings))
    if proc.returncode:
        raise RuntimeError(f"training failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def evaluate(run: Path, threads: int, sample_seeds: int = 4, steps: int = 20, cfg_scale: float = 4.0) -> list[dict]:
    """Sample every caption with `sample_seeds` seeds from the latest checkpoint's EMA; one row per sample."""
    import torch

    from trainer.sample import generate, load_pipeline
    from trainer.train import checkpoints

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, vae, text, diffusion, _ = load_pipeline(checkpoints(run / "run")[-1])
        prompts = [f"a {c} square moving {d}" for c, d in CAPTIONS]
        rows = []
        for seed in range(sample_seeds):
            videos = generate(model, vae, text, diffusion, prompts, FRAMES, SIZE, SIZE, steps, cfg_scale, seed=seed)
            for (colour, direction), video in zip(CAPTIONS, videos):
                got = track(video)
                rows.append({"seed": seed, "caption": f"{colour} {direction}", "colour": got[0] == colour,
                             "direction": got[1] == direction, "tracked": f"{got[0]} {got[1]}"})
        return rows
    finally:
        torch.set_num_threads(previous)


def metrics_of(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "run" / "metrics.jsonl").read_text().splitlines()]


def summary(values: list[float]) -> str:
    return f"{min(values):.1%} | {statistics.median(values):.1%} | {max(values):.1%}"


def plot(results: list[dict], out: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        m = metrics_of(out / r["name"])
        line, = ax.plot([x["step"] for x in m], [x["loss"] for x in m], lw=0.8,
                        ls=":" if r["control"] else "-", label=f"{r['name']}: {r['correct']:.0%}")
        spikes = [x for x in m if x.get("spike")]
        ax.plot([x["step"] for x in spikes], [x["loss"] for x in spikes], "x", color=line.get_color(), ms=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("rectified-flow loss (x: spike warned)")
    ax.set_yscale("log")
    ax.set_title(f"learn_motion: {len(results)} runs")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/learn_motion", help="folder of the runs (data, checkpoints, results)")
    p.add_argument("--plot", help="loss curves PNG (default OUT/loss.png)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (train.seed)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads of each run")
    p.add_argument("--jitter", type=int, nargs="+", default=[1, -1],
                   help="pixels the path may sit off-centre (-1: anywhere)")
    p.add_argument("--control", action="store_true", help="also one shuffled-caption run per jitter")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--clips", type=int, default=128)
    p.add_argument("--sample-seeds", type=int, default=4, help="samples per caption")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--schedule", default="cosine", choices=["constant", "linear", "cosine"], help="optim.schedule")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--time-scale", type=float, default=0.2, help="model.time_scale (the temporal position embedding's)")
    p.add_argument("--conditioning", default="cross_attn", choices=["cross_attn", "adaln", "in_context"],
                   help="model.conditioning")
    args = p.parse_args(argv)
    if min(args.threads) < 1 or args.steps < 1 or min(args.jitter) < -1:
        p.error("--threads and --steps must be >= 1, --jitter >= -1")

    out = Path(args.out)
    runs = [(s, t, j, False) for j, s, t in itertools.product(args.jitter, args.seeds, args.threads)]
    runs += [(args.seeds[0], args.threads[-1], j, True) for j in args.jitter] if args.control else []
    results = []
    for seed, threads, jitter, control in runs:
        name = f"{'control-' if control else ''}seed{seed}-threads{threads}-jitter{jitter}"
        manifest = make_data(out / f"data-jitter{jitter}", args.clips, jitter, shuffle=control)
        cfg = task_config(args.steps, seed, args.lr, args.schedule, log_every=args.log_every, time_scale=args.time_scale,
                          conditioning=args.conditioning)
        train_s = train_run(cfg, manifest, out / name, threads)
        rows = evaluate(out / name, threads, args.sample_seeds, args.sample_steps, args.cfg_scale)
        m = metrics_of(out / name)
        r = {"name": name, "seed": seed, "threads": threads, "jitter": jitter, "control": control,
             "correct": float(np.mean([x["colour"] and x["direction"] for x in rows])),
             "colour": float(np.mean([x["colour"] for x in rows])),
             "direction": float(np.mean([x["direction"] for x in rows])), "samples": len(rows),
             "final_loss": m[-1]["loss"], "spikes": [x["step"] for x in m if x.get("spike")], "train_s": train_s}
        results.append(r)
        misses = [x for x in rows if not (x["colour"] and x["direction"])]
        print(f"{name}: {r['correct']:.1%} correct of {r['samples']} (colour {r['colour']:.0%}, direction "
              f"{r['direction']:.0%}); final loss {r['final_loss']:.4f}; spikes warned at {r['spikes'] or 'none'}; "
              f"train {train_s:.0f} s" + "".join(f"\n  miss: seed {x['seed']} '{x['caption']}' tracked "
                                                 f"'{x['tracked']}'" for x in misses[:4]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out, Path(args.plot) if args.plot else out / "loss.png")

    learned = [r for r in results if not r["control"]]
    print(f"\nlearn_motion: {args.steps} steps, lr {args.lr:g} ({args.schedule}), {args.sample_seeds} samples per "
          f"caption; baseline: chance = 1/16 = {1 / 16:.1%}")
    print("| runs | correct: min | median | max | colour min | direction min |\n|---|---|---|---|---|---|")
    groups = [(f"jitter {j}", [r for r in learned if r["jitter"] == j]) for j in args.jitter]
    groups += [(f"control, jitter {j}", [r for r in results if r["control"] and r["jitter"] == j])
               for j in args.jitter] + [("all", learned)]
    for label, group in groups:
        if group:
            print(f"| {label} ({len(group)}) | {summary([r['correct'] for r in group])} | "
                  f"{min(r['colour'] for r in group):.1%} | {min(r['direction'] for r in group):.1%} |")
    worst = min(r["correct"] for r in learned) if learned else 0.0
    print(f"worst run {worst:.1%} (target >= 90% in every run): {'met' if worst >= 0.9 else 'NOT met'}; "
          f"median over runs {statistics.median(r['correct'] for r in learned):.1%} = "
          f"{statistics.median(r['correct'] for r in learned) * 16:.1f}x chance" if learned else "")
    return 0 if worst >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
