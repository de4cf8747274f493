"""Merging a stage's parts into its manifest: `PartStore.merge` (pyarrow.dataset, threaded) against pandas.concat.

    python bench/manifest.py [--clips 1000000] [--parts 10000] [--repeats 3]

Writes a synthetic manifest of `--clips` rows (the record's columns plus a caption of about 200 characters) as
`--parts` part files, as a stage leaves them, then merges them into one sorted frame both ways, each run in a
fresh process so its peak memory (max RSS) is its own, the two alternating (the order reversed every other
repeat). Prints the median and spread (min-max) of the wall time and the peak memory, and the ratios
(shotcap / pandas) taken per repeat, as their median and spread.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _stats import interleave, load_average, per_repeat, repeats_note, spread  # noqa: E402

WORDS = "a red square moves slowly across a textured green field while the camera pans to the left".split()


def make_parts(folder: Path, clips: int, parts: int) -> None:
    import numpy as np
    import pandas as pd

    from index.manifest import PartStore
    from index.record import make_clip_id

    store = PartStore(folder, "bench")
    rng = np.random.default_rng(0)
    per = clips // parts
    for p in range(parts):
        sha = f"{p:064x}"
        start = np.arange(per) * 50
        words = rng.integers(0, len(WORDS), size=(per, 36))
        df = pd.DataFrame({
            "clip_id": [make_clip_id(sha, a, a + 50) for a in start], "video_path": f"/data/raw/{p:06d}.mp4",
            "video_sha256": sha, "start_sec": start / 25.0, "end_sec": (start + 50) / 25.0, "start_frame": start,
            "end_frame": start + 50, "fps": 25.0, "width": 1280, "height": 720, "num_frames": 50,
            "aspect_ratio": 0.5625, "caption": [" ".join(WORDS[i] for i in w) for w in words],
        })
        store.write(f"{p:08x}", df)


def merge_shotcap(folder: Path):
    from index.manifest import PartStore

    return PartStore(folder, "bench").merge()[0]


def merge_pandas(folder: Path):
    import pandas as pd

    frames = [pd.read_parquet(p) for p in sorted((folder / ".parts" / "bench").glob("*.parquet"))]
    return pd.concat(frames, ignore_index=True).sort_values(["video_path", "start_frame"], kind="stable")


def one(method: str, folder: str) -> None:
    """Runs in a fresh process: merge once, print seconds, peak RSS and rows as JSON."""
    import resource

    t0 = time.perf_counter()
    df = {"shotcap": merge_shotcap, "pandas": merge_pandas}[method](Path(folder))
    sec = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    print(json.dumps({"seconds": sec, "peak_mib": peak, "rows": len(df)}))


def measure(method: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", method, str(folder)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=1_000_000)
    ap.add_argument("--parts", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.one:
        one(*args.one)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        make_parts(folder, args.clips, args.parts)
        print(f"{args.clips:,} clips in {args.parts:,} parts written in {time.perf_counter() - t0:.1f} s")
        runs = interleave(args.repeats, {m: (lambda m=m: measure(m, folder)) for m in ("shotcap", "pandas")})
        assert {r["rows"] for rs in runs.values() for r in rs} == {args.clips // args.parts * args.parts}
        print(f"{load_average()}; {repeats_note(args.repeats)}")
        secs = {m: [r["seconds"] for r in rs] for m, rs in runs.items()}
        peaks = {m: [r["peak_mib"] for r in rs] for m, rs in runs.items()}
        for method in runs:
            print(f"{method:8s} merge {spread(secs[method]).text('{:.2f}', ' s'):>24s}   "
                  f"peak {spread(peaks[method]).text('{:.0f}', ' MiB')}")
        print(f"ratio shotcap / pandas.concat: time {per_repeat(secs['shotcap'], secs['pandas']).text()}, "
              f"peak memory {per_repeat(peaks['shotcap'], peaks['pandas']).text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
