"""Peak memory of `trainer.extract` as the dataset grows (target: flat), against the previous all-in-memory
extract as the baseline in the same run.

Synthetic clips (random frames made per item: no decoding, so only the features path is measured) at one bucket
go through real encoders: the pixels VAE and a random 1-layer T5 as wide as T5-XXL (4096) over 120 tokens, so
every clip's text features have the real size (1.9 MB in float32). For each size, in a fresh process:
  shards    trainer.extract.extract_features: shards of --shard-clips clips written as they are computed
  baseline  every clip's features kept in one dict and saved once at the end (the previous trainer.extract),
            run up to --baseline-max clips only (it holds every feature in memory)
Peak memory is the process's peak RSS minus its RSS once the encoders and the dataset are loaded. The features
are written to --work-dir (about 2.2 MB per clip with the defaults: 22 GB for 10,000) and deleted afterwards.

One measurement per size and method by default (10,000 clips write 22 GB); --repeats N measures each N times,
alternating, and prints the median and spread (min-max), the ratio baseline / shards taken per repeat.

    python bench/extract.py                                              # 1,000 and 10,000 clips
    python bench/extract.py --clips 40 160 --tokens 16 --text-dim 256    # dry run
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

sys.path.append(str(Path(__file__).resolve().parent))  # bench/_stats, also when run as a module
from _stats import interleave, per_repeat, repeats_note, spread  # noqa: E402

from trainer.data import TrainingDataset  # noqa: E402

CAPTIONS = ["a red square moving left", "a blue circle moving up on a street", "a person riding a bike",
            "a car moving right in the scene"]


class SyntheticClips(TrainingDataset):
    """`n` clips of random frames at one bucket, made on demand from the clip's index."""

    def __init__(self, n: int, bucket: tuple[int, int, int]):
        super().__init__()
        T, H, W = bucket
        self.rows = pd.DataFrame({"clip_id": [f"synthetic-{i:07d}" for i in range(n)],
                                  "caption": [CAPTIONS[i % len(CAPTIONS)] for i in range(n)],
                                  "num_frames": T, "height": H, "width": W})
        self.deterministic = True

    def __len__(self) -> int:
        return len(self.rows)

    def shapes(self):
        return list(zip(self.rows["num_frames"], self.rows["height"], self.rows["width"]))

    def __getitem__(self, item):
        i, (T, H, W) = item
        g = torch.Generator().manual_seed(int(i))
        return {"video": torch.rand((3, T, H, W), generator=g) * 2 - 1, "caption": self.rows["caption"][i],
                "clip_id": self.rows["clip_id"][i]}


@torch.no_grad()
def baseline_extract(dataset, bucket, vae, text, out_path: Path, batch_size: int) -> int:
    """The previous trainer.extract: every feature in one dict, one safetensors file saved at the end."""
    from safetensors.torch import save_file

    tensors, meta = {}, []
    for k in range(0, len(dataset), batch_size):
        samples = [dataset[(i, bucket)] for i in range(k, min(k + batch_size, len(dataset)))]
        latents = vae.encode(torch.stack([s["video"] for s in samples]))
        y, mask = text([s["caption"] for s in samples])
        for b, s in enumerate(samples):
            n = len(meta)
            tensors[f"latents.{n}"], tensors[f"y.{n}"] = latents[b].contiguous(), y[b].contiguous()
            tensors[f"mask.{n}"] = mask[b].to(torch.uint8).contiguous()
            meta.append({"index": k + b, "caption": s["caption"], "clip_id": s["clip_id"], "bucket": list(bucket)})
    save_file(tensors, str(out_path), metadata={"clips": json.dumps(meta)})
    return len(meta)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args) -> None:
    """One measurement in this process; prints a JSON line."""
    from trainer.encoders import TextEncoder, build_vae
    from trainer.extract import extract_features
    from trainer.testing import make_tiny_t5

    work = Path(args.work)
    bucket = tuple(args.bucket)
    t5 = make_tiny_t5(str(work / "t5"), d_model=args.text_dim, d_ff=64, num_layers=1)
    text, vae = TextEncoder(t5, "t5", args.tokens), build_vae("pixels")
    dataset = SyntheticClips(args.clips, bucket)
    text(["warm up"])  # the encoders' own first-call allocations and the writers' imports are not the extract's
    vae.encode(dataset[(0, bucket)]["video"][None])
    import pyarrow.parquet  # noqa: F401
    import safetensors.torch  # noqa: F401
    before = peak_mb()
    t0 = time.perf_counter()
    if args.mode == "shards":
        extract_features(dataset, [bucket], vae, text, work / "features", shard_clips=args.shard_clips,
                         batch_size=args.batch_size)
    else:
        baseline_extract(dataset, bucket, vae, text, work / "features.safetensors", args.batch_size)
    seconds = time.perf_counter() - t0
    disk = sum(p.stat().st_size for p in work.rglob("*features*") if p.is_file())
    print(json.dumps({"peak_mb": peak_mb() - before, "seconds": seconds, "disk_mb": disk / 2**20}))


def measure(args, mode: str, clips: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-extract-", dir=args.work_dir))
    try:
        cmd = [sys.executable, __file__, "--child", mode, "--clips-one", str(clips), "--work", str(work),
               "--bucket", *map(str, args.bucket), "--tokens", str(args.tokens), "--text-dim", str(args.text_dim),
               "--shard-clips", str(args.shard_clips), "--batch-size", str(args.batch_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{mode} {clips}: failed\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--baseline-max", type=int, default=1000, help="largest size the baseline runs at")
    p.add_argument("--bucket", type=int, nargs=3, default=[16, 32, 32], metavar=("T", "H", "W"))
    p.add_argument("--tokens", type=int, default=120)
    p.add_argument("--text-dim", type=int, default=4096)
    p.add_argument("--shard-clips", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--work-dir", default=None, help="where the features are written (default: system temp)")
    p.add_argument("--repeats", type=int, default=1, help="measurements per size and method, alternating")
    p.add_argument("--child", choices=["shards", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--clips-one", dest="clips_one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.child:
        args.mode, args.clips = args.child, args.clips_one
        child(args)
        return 0
    T, H, W = args.bucket
    per_clip = (3 * T * H * W + args.tokens * args.text_dim) * 4 + args.tokens
    print(f"bucket {T}x{H}x{W} (pixels VAE), text {args.tokens} tokens x {args.text_dim}, "
          f"{per_clip / 2**20:.2f} MB of features per clip, shards of {args.shard_clips} clips")
    print(repeats_note(args.repeats))
    print(f"{'clips':>8} {'shards peak MB':>22} {'baseline peak MB':>22} {'baseline/shards':>22} {'s (shards)':>22}")
    first = None
    for n in args.clips:
        runs = {"shards": lambda n=n: measure(args, "shards", n)}
        if n <= args.baseline_max:
            runs["baseline"] = lambda n=n: measure(args, "baseline", n)
        got = interleave(args.repeats, runs)
        peaks = {m: [r["peak_mb"] for r in rs] for m, rs in got.items()}
        shards = spread(peaks["shards"])
        first = first or shards.median
        if "baseline" in got:
            ratio = per_repeat(peaks["baseline"], [max(v, 1e-9) for v in peaks["shards"]])
            b_text = f"{spread(peaks['baseline']).text('{:.0f}'):>22s} {ratio.text('{:.1f}', 'x'):>22s}"
        else:
            b_text = f"{'(not run)':>22s} {'':>22s}"
        secs = spread(r["seconds"] for r in got["shards"])
        print(f"{n:8d} {shards.text('{:.0f}'):>22s} {b_text} {secs.text('{:.1f}'):>22s}", flush=True)
    if len(args.clips) > 1:
        print(f"shards peak at {args.clips[-1]} clips / at {args.clips[0]} clips (medians): "
              f"{shards.median / max(first, 1e-9):.2f} (flat: about 1; the clips grew "
              f"{args.clips[-1] / args.clips[0]:.0f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
