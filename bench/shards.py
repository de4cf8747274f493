"""Shard write throughput against a plain copy of the same bytes (target: ratio >= 0.5), and how fast a reader
finds every sample: index.parquet's offsets against scanning every tar header.

Clips are cut once from a synthetic video (real H.264 mp4 bytes), repeated under distinct keys up to
--mb megabytes, and then, alternately (the order reversed every other repeat) and --repeats times each:
  shards  what build-shards' webdataset writer runs for every shard it writes: `plan_shards` (split at
          --shard-size by bucket) and `write_shard` (webdataset.TarWriter: each sample's mp4 and json members,
          temp file, fsync, rename), with the manifest row as the JSON record
  copy    the same files read and appended to one output file with one fsync (the baseline)
Both read the staged files from the page cache; one small untimed run of each comes first (the writer
imports webdataset on first use). Printed: each side's seconds and MB/s as the median and
spread (min-max) over the repeats, and the ratio shards / copy taken per repeat (median and spread). Then,
--repeats times each:
  scan    tarfile.getmembers() over every shard (what a reader without offsets does at start-up)
  offsets pandas.read_parquet of the (shard, offset, size) table build-shards writes as index.parquet
The cut rate is printed for information.

    python bench/shards.py            # 1024 MB, 7 repeats (1-2.5 s per repeat and side; under a minute)
    python bench/shards.py --mb 64    # quicker try
"""

from __future__ import annotations

import argparse
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import pandas as pd

from _stats import interleave, load_average, per_repeat, repeats_note, spread
from index import synth
from index.files import file_sha256
from index.record import Clip
from index.shards.formats.webdataset import plan_shards, write_shard
from index.shards.names import parse_size
from index.video import cut_clips, probe


def make_clips(folder: Path, mb: int) -> tuple[list[tuple[str, dict, Path]], float]:
    """Staged clips (key, manifest row, path) adding up to `mb` MB, and the cut rate (clips/s)."""
    src = folder / "source.mp4"
    synth.make_video(src, [synth.ShotSpec(48, seed=s, motion="fast") for s in range(8)], size=(640, 360))
    info, sha = probe(src), file_sha256(src)
    ranges = [(k * 48, (k + 1) * 48) for k in range(8)]
    t0 = time.perf_counter()
    paths = cut_clips(src, ranges, [folder / f"base{k}.mp4" for k in range(8)])
    cut_rate = len(ranges) / (time.perf_counter() - t0)
    samples, total, n = [], 0, 0
    while total < mb * 1e6:
        k = n % len(paths)
        a, b = ranges[k]
        row = Clip.from_range(str(src), sha, a + n, b + n, a / 25, b / 25, info.fps, info.width, info.height).to_dict()
        row["caption"] = f"a fast moving shape over a textured background, copy {n}"
        dst = folder / f"{row['clip_id']}.mp4"
        shutil.copy(paths[k], dst)
        samples.append((row["clip_id"], row, dst))
        total += dst.stat().st_size
        n += 1
    return samples, cut_rate


def run_shards(samples, out: Path, shard_size: int) -> float:
    df = pd.DataFrame({"key": [k for k, _, _ in samples], "bucket": "360p_16x9_f033-064"})
    sizes = {k: p.stat().st_size for k, _, p in samples}
    plan = plan_shards(df, sizes, shard_size)
    by_key = {k: (k, row, p) for k, row, p in samples}
    rows = []
    t0 = time.perf_counter()
    for shard, group in plan.groupby("shard", sort=True):
        spots = write_shard(out / shard, [by_key[k] for k in group["key"]])
        rows += [(k, shard, o, n) for k, (o, n) in zip(group["key"], spots)]
    seconds = time.perf_counter() - t0
    pd.DataFrame(rows, columns=["key", "shard", "offset", "size"]).to_parquet(out / "index.parquet")
    return seconds


def run_scan(out: Path) -> float:
    t0 = time.perf_counter()
    found = 0
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            found += sum(m.name.endswith(".mp4") for m in tf.getmembers())
    assert found
    return time.perf_counter() - t0


def run_offsets(out: Path) -> float:
    t0 = time.perf_counter()
    assert len(pd.read_parquet(out / "index.parquet", columns=["shard", "offset", "size"]))
    return time.perf_counter() - t0


def run_copy(samples, out: Path) -> float:
    t0 = time.perf_counter()
    with open(out / "copy.bin", "wb") as f:
        for _, _, p in samples:
            f.write(p.read_bytes())
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--mb", type=int, default=1024, help="megabytes of clips to write")
    ap.add_argument("--shard-size", default="100MB", help="largest shard, as build-shards --shard-size")
    ap.add_argument("--repeats", "--repeat", type=int, default=7,
                    help="runs per side, alternating; median and spread printed")
    ap.add_argument("--dir", default=None, help="scratch folder (None: a temp folder)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        (tmp / "staged").mkdir()
        samples, cut_rate = make_clips(tmp / "staged", args.mb)
        total = sum(p.stat().st_size for _, _, p in samples)

        def fresh(name: str) -> Path:
            out = tmp / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            return out

        run_shards(samples[:64], fresh("s"), parse_size(args.shard_size))  # warm-up, untimed: the writer's
        run_copy(samples[:64], fresh("c"))  # imports (webdataset loads on first use) and first-call costs
        runs = interleave(args.repeats, {
            "shards": lambda: run_shards(samples, fresh("s"), parse_size(args.shard_size)),
            "copy": lambda: run_copy(samples, fresh("c")),
        })
        shard_bytes = sum(p.stat().st_size for p in (tmp / "s").glob("*.tar"))
        shards = len(list((tmp / "s").glob("*.tar")))
        scan = spread(run_scan(tmp / "s") * 1e3 for _ in range(args.repeats))
        offsets = spread(run_offsets(tmp / "s") * 1e3 for _ in range(args.repeats))
    ratio = per_repeat(runs["copy"], runs["shards"])  # MB/s shards / MB/s copy = copy time / shards time
    print(f"{len(samples)} clips, {total / 1e6:.0f} MB of mp4 ({shard_bytes / 1e6:.0f} MB in {shards} shards, "
          f"shard size {args.shard_size}); {load_average()}")
    print(repeats_note(args.repeats))
    for name, label in (("shards", "shards"), ("copy", "plain copy")):
        secs = spread(runs[name])
        rate = spread(total / t / 1e6 for t in runs[name])
        print(f"{label}: {secs.text('{:.2f}', ' s')}  {rate.text('{:.0f}', ' MB/s')}")
    print(f"ratio shards / copy: {ratio.text()}  (target >= 0.5: {'met' if ratio.median >= 0.5 else 'NOT met'})")
    print(f"finding every sample: tar header scan {scan.text('{:.1f}', ' ms')}, index.parquet offsets "
          f"{offsets.text('{:.1f}', ' ms')} (scan / offsets: {scan.median / offsets.median:.1f}x)")
    print(f"for information: cutting 640x360 clips with one decode: {cut_rate:.1f} clips/s (48 frames each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
