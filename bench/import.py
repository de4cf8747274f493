"""import-clips at Panda-70M's scale: a synthetic metadata file in Panda-70M's layout (3 clips a row), videos
absent, parsed and every row's failure recorded, in bounded memory.

    python bench/import.py                      # 80k and 800k rows (800k rows, 2.4M clips: its 2M training split)
    python bench/import.py --rows 20000 200000 --repeats 3

Each run is its own process (peak RSS from getrusage); the baseline is the smallest file, measured in the same run:
the report is rows/s and the peak RSS of each size against it (bounded memory: < 1.5x for 10x the rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from _stats import interleave, per_repeat, spread  # noqa: E402


def make_csv(path: Path, rows: int) -> None:
    """Rows shaped as Panda-70M's: an 11-character id, three [start, end] pairs, captions, scores."""
    with open(path, "w") as f:
        f.write("videoID,url,timestamp,caption,matching_score\n")
        for i in range(rows):
            vid = f"{i:011d}"
            stamps = [[f"0:00:{3 * k:02d}.000", f"0:00:{3 * k + 2:02d}.500"] for k in range(3)]
            caps = [f"a person does thing number {k} in video {i}, seen from the side" for k in range(3)]
            scores = [round(0.3 + 0.05 * k, 2) for k in range(3)]
            f.write(f'{vid},https://www.youtube.com/watch?v={vid},"{stamps}","{caps}","{scores}"\n')


CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from splitter.imports import import_clips
t0 = time.perf_counter()
summary = {{}}
import_clips("panda70m", {csv!r}, {out!r}, videos={videos!r}, progress=False, summary=summary)
seconds = time.perf_counter() - t0
print(json.dumps({{"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  **{{k: summary[k] for k in ("rows", "spans", "failures", "clips")}}}}))
"""


def run_once(csv: Path, work: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=work, prefix="out-"))
    videos = work / "videos"
    videos.mkdir(exist_ok=True)
    code = CHILD.format(root=str(ROOT), csv=str(csv), out=str(out), videos=str(videos))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs=2, default=[80_000, 800_000], metavar=("BASELINE", "LARGE"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    small, large = args.rows
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        work = Path(tmp)
        csvs = {}
        for n in (small, large):
            csvs[n] = work / f"panda_{n}.csv"
            make_csv(csvs[n], n)

        def runner(n):
            def go():
                r = run_once(csvs[n], work)
                assert r["rows"] == n and r["spans"] == 3 * n and r["failures"] == n and r["clips"] == 0, r
                return r
            return go

        runs = interleave(args.repeats, {small: runner(small), large: runner(large)})
        for n in (small, large):
            rate = spread(n / r["seconds"] for r in runs[n])
            rss = spread(r["rss_mb"] for r in runs[n])
            print(f"{n:>9,} rows ({3 * n:,} clips, {os.path.getsize(csvs[n]) / 1e6:.0f} MB, videos absent): "
                  f"{rate.text('{:,.0f}', ' rows/s')}, peak RSS {rss.text('{:.0f}', ' MB')}")
        ratio = per_repeat([r["rss_mb"] for r in runs[large]], [r["rss_mb"] for r in runs[small]])
        print(f"peak RSS at {large:,} rows / at {small:,} rows (baseline): {ratio.text('{:.2f}', 'x')} "
              f"for {large / small:.0f}x the rows")


if __name__ == "__main__":
    main()
