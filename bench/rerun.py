"""A re-run with nothing to do reads only what changed: every stage's no-op re-run against its first run.

    python bench/rerun.py [--gb 2.0] [--videos 8] [--size 1280x720] [--work-dir DIR] [--repeats 3]

Writes a corpus of at least `--gb` GB (synthetic shots with cuts plus film grain, H.264 at CRF 18: the bytes
per frame of high-quality 720p footage), then runs the commands a user types, each as its own process:
split-videos (TransNetV2), caption-videos (a tiny random Qwen2-VL), score-clips (when installed), index-clips
and build-shards. Then it runs every command again on the same folders, `--repeats` times: a re-run with
nothing to do must not read the corpus again (source hashes are cached by file identity, parts are skipped).
Prints the first run, the median and spread of the re-runs per stage, and the ratio re-run / first run
(target: under 2 %). The baseline is the first run of the same commands, measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _stats import load_average, repeats_note, spread  # noqa: E402


def make_corpus(raw: Path, gb: float, videos: int, size: tuple[int, int]) -> int:
    """Grainy H.264 videos with cuts until the corpus holds `gb` GB; returns its bytes."""
    import av
    import numpy as np

    from index import synth

    raw.mkdir(parents=True, exist_ok=True)
    per_video = gb * 1e9 / videos
    rng = np.random.default_rng(0)
    total = 0
    for v in range(videos):
        path = raw / f"take_{v:02d}.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=25, options={"crf": "18", "preset": "ultrafast"})
            stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
            k, written = 0, 0
            while written < per_video:
                frames, _ = synth.render([synth.ShotSpec(60, seed=1000 * v + k)], size=size)
                for img in frames:  # grain: real footage's noise, which is what makes real corpora big
                    grain = rng.integers(-10, 11, size=img.shape, dtype=np.int16)
                    noisy = np.clip(img.astype(np.int16) + grain, 0, 255).astype(np.uint8)
                    for packet in stream.encode(av.VideoFrame.from_ndarray(noisy, format="rgb24")):
                        written += packet.size
                        out.mux(packet)
                k += 1
            for packet in stream.encode():
                out.mux(packet)
        total += path.stat().st_size
    return total


def commands(raw: Path, work: Path, model: str) -> list[tuple[str, list[str]]]:
    exe = Path(sys.executable).parent
    split, cap = work / "split" / "clips.parquet", work / "cap" / "clips.parquet"
    steps = [
        ("split", [str(exe / "split-videos"), str(raw), "-o", str(work / "split"), "--no-progress"]),
        ("caption", [str(exe / "caption-videos"), str(split), "-o", str(work / "cap"), "--model", model,
                     "--num-frames", "4", "--max-new-tokens", "16", "--batch-size", "4", "--quiet"]),
    ]
    if (exe / "score-clips").exists():
        steps.append(("score", [str(exe / "score-clips"), str(cap), "-o", str(work / "scored")]))
        cap = work / "scored" / "clips.parquet"
    steps += [
        ("index", [str(exe / "index-clips"), str(cap), "-o", str(work / "idx"), "--quiet"]),
        ("shards", [str(exe / "build-shards"), str(cap), "-o", str(work / "shards"), "--index", str(work / "idx"),
                    "--allow-flags", "all"]),  # a tiny random model's captions are all flagged
    ]
    return steps


def run(argv: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{Path(argv[0]).name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=2.0, help="corpus size in GB (at least)")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work-dir", default=None, help="where the corpus and outputs go (default: a temp folder)")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    size = tuple(int(x) for x in args.size.split("x"))
    from captioner.testing import build_tiny_model

    tmp = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="shotcap-rerun-"))
    try:
        t = time.perf_counter()
        nbytes = make_corpus(tmp / "raw", args.gb, args.videos, size)
        print(f"corpus: {args.videos} videos, {nbytes / 1e9:.2f} GB at {args.size} (written in "
              f"{time.perf_counter() - t:.0f} s)")
        model = str(build_tiny_model("qwen2-vl", tmp / "tiny-vlm"))
        steps = commands(tmp / "raw", tmp / "out", model)
        first = {name: run(argv) for name, argv in steps}
        again = {name: [] for name, _ in steps}
        for _ in range(args.repeats):
            for name, argv in steps:
                again[name].append(run(argv))
        print(f"{load_average()}; re-runs: {repeats_note(args.repeats, alternating=False)}")
        print(f"{'stage':8s} {'first run s':>12s} {'re-run s (median, min-max)':>28s} {'ratio':>7s}")
        for name, _ in steps:
            med = spread(again[name])
            print(f"{name:8s} {first[name]:12.1f} {med.text():>28s} {100 * med.median / first[name]:6.2f}%")
        total_first = sum(first.values())
        totals = spread(sum(again[name][k] for name, _ in steps) for k in range(args.repeats))
        print(f"{'all':8s} {total_first:12.1f} {totals.text():>28s} {100 * totals.median / total_first:6.2f}%")
        print(f"no-op re-run of every stage / first run: {100 * totals.median / total_first:.2f} % (target < 2 %)")
    finally:
        if not args.work_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
