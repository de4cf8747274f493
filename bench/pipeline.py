"""Hours of video processed per hour of wall time by the whole CPU pipeline, local engine against Ray with
2 workers on this machine, with the time of each stage.

    python bench/pipeline.py [--videos 4] [--seconds 12] [--size 320x180] [--workers 2] [--detector transnetv2]
                             [--repeats 1]

Input: synthetic videos from `index.synth` (moving shapes, cuts, fades). Pipeline: split-videos ->
caption-videos (a tiny random Qwen2-VL from `captioner.testing`: real preprocessing and generate calls,
random words) -> index-clips (frame signature + bundled MiniLM) -> build-shards. Each stage runs through its
CLI entry point in this process, once with `--engine local` and once with `--engine ray --workers N` on a Ray
started here with `ray.init(num_cpus=N)` (its start is timed apart: a cluster is already running in real
use; Ray is stopped again before the next local run, so its processes do not slow that run). Model loading
is inside each stage's time, as a user sees it. The machine load average is printed because other processes
on a shared machine slow every row.

One run per engine by default (a run takes minutes); --repeats N runs both N times, alternating (the order
reversed every other repeat, each run in fresh folders), and prints every figure as the median and spread
(min-max) over the repeats, the local / ray ratio taken per repeat.
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

from _stats import interleave, load_average, per_repeat, repeats_note, spread  # noqa: E402
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


def run_ray(raw: Path, work: Path, model: str, detector: str, workers: int) -> tuple[dict[str, float], float]:
    """The pipeline on a Ray started here for it (and stopped after); returns (stage times, Ray's start time)."""
    import ray

    t = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, configure_logging=False, log_to_driver=False)
    start = time.perf_counter() - t
    try:
        return run_pipeline(raw, work, model, detector, ["--engine", "ray", "--workers", str(workers)]), start
    finally:
        ray.shutdown()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--videos", type=int, default=4, help="synthetic source videos")
    ap.add_argument("--seconds", type=float, default=12.0, help="length of each video")
    ap.add_argument("--size", default="320x180", help="video size WxH")
    ap.add_argument("--workers", type=int, default=2, help="Ray actors per stage")
    ap.add_argument("--detector", default="transnetv2", help="split-videos --detector")
    ap.add_argument("--repeats", type=int, default=1, help="runs per engine, alternating (1: no spread)")
    ap.add_argument("--keep", default=None, help="keep the work folders here (None: a temp folder, removed at the end)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    w, h = (int(x) for x in args.size.split("x"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    tmp = Path(args.keep or tempfile.mkdtemp(prefix="bench_pipeline_"))
    raw = tmp / "raw"
    synth.make_sample_videos(raw, count=args.videos, seconds=args.seconds, size=(w, h))
    video_sec = sum(probe(p).duration for p in sorted(raw.glob("*.mp4")))
    from captioner.testing import build_tiny_model

    model = build_tiny_model("qwen2-vl", tmp / "tiny_qwen2_vl")
    done = {"local": 0, "ray": 0}

    def folder(engine: str) -> Path:  # fresh folders for every run; the previous run's are removed unless kept
        done[engine] += 1
        if not args.keep and done[engine] > 1:
            shutil.rmtree(tmp / f"{engine}{done[engine] - 1}", ignore_errors=True)
        return tmp / f"{engine}{done[engine]}"

    runs = interleave(args.repeats, {
        "local": lambda: run_pipeline(raw, folder("local"), model, args.detector, ["--engine", "local"]),
        "ray": lambda: run_ray(raw, folder("ray"), model, args.detector, args.workers),
    })
    local = runs["local"]
    remote = [times for times, _ in runs["ray"]]
    ray_start = spread(start for _, start in runs["ray"])

    print(f"\n{args.videos} synthetic videos x {args.seconds:g} s at {w}x{h} = {video_sec / 60:.2f} min of video; "
          f"detector {args.detector}; tiny random Qwen2-VL captioner; {load_average()}")
    print(f"{repeats_note(args.repeats)}\n")
    print(f"| stage | local (s) | ray, {args.workers} workers (s) | local / ray |")
    print("|---|---:|---:|---:|")
    for name in (*STAGES, "total"):
        a = [sum(t.values()) if name == "total" else t[name] for t in local]
        b = [sum(t.values()) if name == "total" else t[name] for t in remote]
        print(f"| {name} | {spread(a).text('{:.1f}')} | {spread(b).text('{:.1f}')} | "
              f"{per_repeat(a, b).text('{:.2f}', 'x')} |")
    per_hour_local = spread(video_sec / sum(t.values()) for t in local)
    per_hour_ray = spread(video_sec / sum(t.values()) for t in remote)
    print(f"\nhours of video per hour of wall time: local {per_hour_local.text()}, "
          f"ray {per_hour_ray.text()} (baseline: the local engine in the same run); "
          f"ray start {ray_start.text('{:.1f}', ' s')} not included")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
