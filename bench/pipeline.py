"""Hours of video processed per hour of wall time by the whole CPU pipeline, local engine against Ray with
2 workers on this machine, with the time of each stage.

    python bench/pipeline.py [--videos 4] [--seconds 12] [--size 320x180] [--workers 2] [--detector transnetv2]

Input: synthetic videos from `index.synth` (moving shapes, cuts, fades). Pipeline: split-videos ->
caption-videos (a tiny random Qwen2-VL from `captioner.testing`: real preprocessing and generate calls,
random words) -> index-clips (frame signature + bundled MiniLM) -> build-shards. Each stage runs through its
CLI entry point in this process, once with `--engine local` and once with `--engine ray --workers N` on a Ray
started here with `ray.init(num_cpus=N)` (its start is timed apart: a cluster is already running in real
use). Model loading is inside each stage's time, as a user sees it. The machine load average is printed
because other processes on a shared machine slow every row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from index import synth  # noqa: E402
from index.video import probe  # noqa: E402

STAGES = ("split", "caption", "index", "shards")


def stage_commands(raw: Path, work: Path, model: str, detector: str) -> dict:
    """{stage: (CLI entry point, argv)}: the commands a user types, run in this process."""
    from captioner.cli import main as caption_main
    from index.dedup.cli import index_main
    from index.shards.cli import shards_main
    from splitter.cli import main as split_main

    return {
        "split": (split_main, [str(raw), "-o", str(work / "split"), "--detector", detector, "--no-progress"]),
        "caption": (caption_main, [str(work / "split" / "clips.parquet"), "-o", str(work / "cap"), "--model",
                                   model, "--num-frames", "4", "--max-new-tokens", "16", "--batch-size", "4",
                                   "--quiet"]),
        "index": (index_main, [str(work / "cap" / "clips.parquet"), "-o", str(work / "idx")]),
        "shards": (shards_main, [str(work / "cap" / "clips.parquet"), "-o", str(work / "shards"), "--index",
                                 str(work / "idx"), "--allow-flags", "all"]),  # tiny random captions: all flagged
    }


def run_pipeline(raw: Path, work: Path, model: str, detector: str, engine: list[str]) -> dict[str, float]:
    commands = stage_commands(raw, work, model, detector)
    times = {}
    for stage in STAGES:
        fn, argv = commands[stage]
        t = time.perf_counter()
        rc = fn(argv + engine)
        times[stage] = time.perf_counter() - t
        if rc != 0:
            raise SystemExit(f"{stage} exited {rc} with {' '.join(engine)}")
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--size", default="320x180")
    ap.add_argument("--workers", type=int, default=2, help="Ray actors per stage (default 2)")
    ap.add_argument("--detector", default="transnetv2")
    ap.add_argument("--keep", default=None, help="keep the work folders here")
    args = ap.parse_args(argv)
    w, h = (int(x) for x in args.size.split("x"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    tmp = Path(args.keep or tempfile.mkdtemp(prefix="bench_pipeline_"))
    raw = tmp / "raw"
    synth.make_sample_videos(raw, count=args.videos, seconds=args.seconds, size=(w, h))
    video_sec = sum(probe(p).duration for p in sorted(raw.glob("*.mp4")))
    from captioner.testing import build_tiny_model

    model = build_tiny_model("qwen2-vl", tmp / "tiny_qwen2_vl")

    local = run_pipeline(raw, tmp / "local", model, args.detector, ["--engine", "local"])
    import ray

    t = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, configure_logging=False, log_to_driver=False)
    ray_start = time.perf_counter() - t
    try:
        remote = run_pipeline(raw, tmp / "ray", model, args.detector,
                              ["--engine", "ray", "--workers", str(args.workers)])
    finally:
        ray.shutdown()

    rows = [(s, local[s], remote[s]) for s in STAGES] + [("total", sum(local.values()), sum(remote.values()))]
    print(f"\n{args.videos} synthetic videos x {args.seconds:g} s at {w}x{h} = {video_sec / 60:.2f} min of video; "
          f"detector {args.detector}; tiny random Qwen2-VL captioner; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print(f"| stage | local (s) | ray, {args.workers} workers (s) | local / ray |")
    print("|---|---:|---:|---:|")
    for name, a, b in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    print(f"\nhours of video per hour of wall time: local {video_sec / rows[-1][1]:.2f}, "
          f"ray {video_sec / rows[-1][2]:.2f} (baseline: the local engine in the same run); "
          f"ray start {ray_start:.1f} s not included")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
