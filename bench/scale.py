"""The driver at scale: a stage without media through the real engine and part store, 10^4 to 10^6 units.

    python bench/scale.py [--units 10000 100000 1000000] [--stores local s3] [--baseline-units 10000 100000]

Each unit stands for a source video of 10-20 clips, each with a caption of about 240 characters, as a captioning
stage writes them. Every size runs in a fresh process (its peak memory is its own) and measures:
- driver ms per unit: the engine and store's own time (the run's wall time less the stage's `process` time);
- the files written (batches, then after compaction), the time to compact them;
- the time to write the sorted manifest from the parts (streamed through the query engine) and the peak RSS;
- a no-op re-run: a new store learns what is done from its batches (one listing, one read each).
On `s3` the store is the local S3-API server (moto's, in a process of its own, so its memory is not the
driver's); its request count for the no-op re-run is printed too.

Baseline, measured in the same run: the part store this replaced (landed main): one atomically written,
fsync'd Parquet file per unit, and a merge into one pandas DataFrame (`--baseline-units`). Printed: the per-unit
ratio baseline / ours and the peak-memory ratio at each size both ran.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("a red square moves slowly across a textured green field while the camera pans to the left past an old "
         "stone wall under soft evening light with people walking by and cars parked along a narrow street").split()


def make_stage(units: int):
    import numpy as np
    import pyarrow as pa

    from index.engine import Output, Stage, Unit

    class Captions(Stage):
        """Unit i: a source of 10-20 clips, each with a caption of about 240 characters."""

        name = "captions"
        unit_name = "videos"
        process_s = 0.0

        def units(self):
            return (Unit(f"{i:016x}", f"/data/raw/{i:07d}.mp4", i) for i in range(units))

        def total(self):
            return units

        def process(self, state, unit):
            t0 = time.perf_counter()
            i = unit.data
            rng = np.random.default_rng(i)
            n = 10 + i % 11
            words = rng.integers(0, len(WORDS), size=(n, 40))
            caps = [" ".join(WORDS[w] for w in row)[:240] for row in words]
            start = np.arange(n, dtype=np.int64) * 50
            table = pa.table({"clip_id": [f"{i:012x}{k:04x}" for k in range(n)],
                              "video_path": [unit.path] * n, "start_frame": start, "caption": caps,
                              "caption_model": ["Qwen/Qwen2.5-VL-7B-Instruct"] * n, "caption_tokens": [60] * n})
            Captions.process_s += time.perf_counter() - t0
            return Output(table)

        def merge(self, store):
            return None

    return Captions()


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> dict:
    """One size, one store, in this (fresh) process."""
    from index import query
    from index.engine import EngineOptions, run_stage
    from index.manifest import write_stream
    from index.parts import UNIT, PartStore

    out = args.out
    stage = make_stage(args.units)
    base_mb = peak_mb()
    t0 = time.perf_counter()
    report = run_stage(stage, PartStore(out, "captions"), EngineOptions(progress=False))
    run_s = time.perf_counter() - t0
    phases = {"run": peak_mb()}
    store = PartStore(out, "captions")
    batches = len(store.files())
    t1 = time.perf_counter()
    store.compact()
    compact_s = time.perf_counter() - t1
    phases["compact"] = peak_mb()
    t2 = time.perf_counter()
    with query.connect() as con:
        sql = query.part_rows(con, store)
        cols = ", ".join(query.ident(c) for c in query.names_of(con, sql) if c != UNIT)
        ordered = query.Sorted(f"SELECT {cols} FROM ({sql})", ["video_path", "start_frame", "clip_id"])
        rows = write_stream(query.batches(con, ordered), f"{out}/clips.parquet", check=False)
    merge_s = time.perf_counter() - t2
    phases["manifest"] = peak_mb()
    if args.count_url:
        _reset(args.count_url)
    t3 = time.perf_counter()
    again = run_stage(make_stage(args.units), PartStore(out, "captions"), EngineOptions(progress=False))
    noop_s = time.perf_counter() - t3
    requests = _requests(args.count_url) if args.count_url else None
    assert again.done == 0 and report.done == args.units
    return {"units": args.units, "clips": rows, "ms_per_unit": 1000 * (run_s - stage.process_s) / args.units,
            "process_s": stage.process_s, "run_s": run_s, "batches": batches, "after_compaction": len(store.files()),
            "compact_s": compact_s, "merge_s": merge_s, "noop_s": noop_s, "noop_requests": requests,
            "peak_mb": peak_mb(), "start_mb": base_mb, "phases": phases}


def child_baseline(args) -> dict:
    """Landed main's store, re-implemented in its essentials: a fsync'd Parquet file per unit; pandas merge."""
    import io

    import pandas as pd
    import pyarrow.parquet as pq

    from index.files import atomic_write_bytes

    stage = make_stage(args.units)
    folder = Path(args.out) / ".parts" / "captions"
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    for unit in stage.units():
        if (folder / f"{unit.key}.parquet").exists():  # the per-unit done check
            continue
        table = stage.process(None, unit).rows
        sink = io.BytesIO()
        pq.write_table(table, sink)
        atomic_write_bytes(folder / f"{unit.key}.parquet", sink.getvalue())
    run_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    df = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))], ignore_index=True)
    df = df.sort_values(["video_path", "start_frame"], kind="stable")
    merge_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    done = sum(1 for u in make_stage(args.units).units() if (folder / f"{u.key}.parquet").exists())
    noop_s = time.perf_counter() - t2
    return {"units": args.units, "clips": len(df), "ms_per_unit": 1000 * (run_s - stage.process_s) / args.units,
            "run_s": run_s, "batches": done, "merge_s": merge_s, "noop_s": noop_s, "peak_mb": peak_mb()}


def _reset(url: str) -> None:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{url}/_shotcap/requests", method="POST"))


def _requests(url: str) -> int:
    import urllib.request

    return int(json.loads(urllib.request.urlopen(f"{url}/_shotcap/requests").read())["total"])


SERVER = """
import json, sys, threading
sys.path.insert(0, {tests!r})
from s3 import CountingServer
srv = CountingServer(); srv.start()
print(srv.url, flush=True)
threading.Event().wait()
"""


def run_child(kind: str, units: int, store: str, env: dict, url: str | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="shotcap-scale-") as tmp:
        out = f"s3://scale-{units}-{kind}-{os.getpid()}" if store == "s3" else tmp
        if store == "s3":
            import fsspec

            fsspec.filesystem("s3").mkdir(out[5:])
        cmd = [sys.executable, __file__, "--child", kind, "--units", str(units), "--out", out]
        if url and store == "s3":
            cmd += ["--count-url", url]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--stores", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    ap.add_argument("--s3-max-units", type=int, default=100_000,
                    help="largest size run on the S3 server (it holds every object in its memory)")
    ap.add_argument("--baseline-units", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--count-url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.units = args.units[0]
        print(json.dumps(child(args) if args.child == "ours" else child_baseline(args)))
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = url = None
    if "s3" in args.stores:
        server = subprocess.Popen([sys.executable, "-c", SERVER.format(tests=str(ROOT / "tests"))],
                                  stdout=subprocess.PIPE, text=True)
        url = server.stdout.readline().strip()
        sys.path.insert(0, str(ROOT / "tests"))
        from s3 import environment

        env.update(environment(url))
        os.environ.update(environment(url))
    try:
        print(f"machine: {socket.gethostname()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
        rows = []
        for store in args.stores:
            for units in args.units:
                if store == "s3" and units > args.s3_max_units:
                    continue
                r = run_child("ours", units, store, env, url)
                b = run_child("baseline", units, "local", env, None) if store == "local" and \
                    units in args.baseline_units else None
                rows.append((store, r, b))
                print(json.dumps({"store": store, "ours": r, "baseline": b}), flush=True)
        print()
        print("| store | units | clips | driver ms/unit | batches (compacted) | compact s | manifest s | no-op re-run s "
              "| requests | peak RSS MB | baseline ms/unit | baseline peak MB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for store, r, b in rows:
            print(f"| {store} | {r['units']:,} | {r['clips']:,} | {r['ms_per_unit']:.3f} | {r['batches']:,} "
                  f"({r['after_compaction']}) | {r['compact_s']:.1f} | {r['merge_s']:.1f} | {r['noop_s']:.2f} | "
                  f"{r['noop_requests'] if r['noop_requests'] is not None else '-'} | {r['peak_mb']:.0f} | "
                  + (f"{b['ms_per_unit']:.3f} | {b['peak_mb']:.0f} |" if b else "- | - |"))
        local = [r for s, r, _ in rows if s == "local"]
        if len(local) >= 2:
            small, big = local[0], local[-1]
            print(f"\npeak RSS growth from {small['clips']:,} to {big['clips']:,} clips: "
                  f"{big['peak_mb'] / small['peak_mb']:.2f}x (target < 1.3x; < 1,024 MB at 10^7 clips)")
        for s, r, b in rows:
            if b:
                print(f"{r['units']:,} units: driver per unit baseline / ours {b['ms_per_unit'] / r['ms_per_unit']:.1f}x, "
                      f"peak memory baseline / ours {b['peak_mb'] / r['peak_mb']:.2f}x")
    finally:
        if server is not None:
            server.kill()


if __name__ == "__main__":
    main()
