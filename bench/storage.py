"""Sources on a bucket against the same sources on local disk: decode and score throughput, requests and bytes.

    python bench/storage.py [--sources 6] [--seconds 12] [--size 1280x720] [--repeats 3]

The bucket is the local S3-API server (moto's, in a process of its own), reached over HTTP on 127.0.0.1 as any
bucket is: so the figure is what the storage path costs (range requests, the fsspec file object under PyAV), not
a network. A remote source is decoded from a streamed file object: `index.storage.open_read` reads ahead in 8 MB
ranges, so one sequential decode costs about size / 8 MB requests and reads each byte once; nothing is cached on
local disk. Per repeat, alternating the two sides: (1) decode every frame of every source at its size,
(2) score-clips' offline scorers on every clip (one decode at a 256-pixel short side per source). Prints frames/s
and clips/s of each side (median and min-max), the ratio of the times (bucket / disk) per repeat, and the requests and bytes the
server answered per clip (bytes read over the bytes of the sources).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _stats import interleave, load_average, per_repeat, spread  # noqa: E402

SERVER = """
import sys, threading
sys.path.insert(0, {tests!r})
from s3 import CountingServer
srv = CountingServer(); srv.start()
print(srv.url, flush=True)
threading.Event().wait()
"""
COUNTER = "/_shotcap/requests"


def counts(url: str, reset: bool = False) -> dict:
    req = urllib.request.Request(url + COUNTER, method="POST" if reset else "GET")
    return json.loads(urllib.request.urlopen(req).read())


def clips_of(path, sha: str, length: int = 50) -> list[dict]:
    from index.record import Clip
    from index.video import probe

    info = probe(path)
    n = int(round(info.duration * info.fps))
    return [Clip.from_range(str(path), sha, a, a + length, a / info.fps, (a + length) / info.fps, info.fps,
                            info.width, info.height).to_dict() for a in range(0, n - length + 1, length)]


def decode_all(paths) -> int:
    from index.video import iter_frames

    return sum(1 for p in paths for _ in iter_frames(p))


def score_all(sources, scorers, flow) -> int:
    from scorer.stage import score_source

    return sum(len(score_source(p, rows, scorers, flow).rows) for p, rows in sources)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sources", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))

    server = subprocess.Popen([sys.executable, "-c", SERVER.format(tests=str(ROOT / "tests"))],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        sys.path.insert(0, str(ROOT / "tests"))
        from s3 import environment

        os.environ.update(environment(url))
        import fsspec

        from index import synth
        from index.files import file_sha256
        from scorer.flow import make_flow
        from scorer.registry import select_scorers

        tmp = Path(tempfile.mkdtemp(prefix="shotcap-storage-"))
        fs = fsspec.filesystem("s3")
        fs.mkdir("bench-sources")
        local, remote, total_bytes = [], [], 0
        for i in range(args.sources):
            shots, trans = synth.sample_layout(500 + i, seconds=args.seconds)
            p = tmp / f"s{i}.mp4"
            synth.make_video(p, shots, trans, size=(w, h))
            fs.put_file(str(p), f"bench-sources/s{i}.mp4")
            sha = file_sha256(p)
            rows = clips_of(p, sha)
            local.append((str(p), rows))
            remote.append((f"s3://bench-sources/s{i}.mp4", [dict(r, video_path=f"s3://bench-sources/s{i}.mp4")
                                                          for r in rows]))
            total_bytes += p.stat().st_size
        clips = sum(len(r) for _, r in local)
        scorers = [s.load() for s in select_scorers("default", has_caption=False)]
        flow = make_flow(None, None)
        print(f"{args.sources} sources of {args.seconds:g} s at {w}x{h} ({total_bytes / 1e6:.1f} MB), {clips} clips; "
              f"{load_average()}")

        traffic = {}

        def timed(fn, side):
            def run():
                if side == "bucket":
                    counts(url, reset=True)
                t0 = time.perf_counter()
                n = fn()
                dt = time.perf_counter() - t0
                if side == "bucket":
                    traffic.setdefault(fn.__name__, []).append(counts(url))
                return n / dt
            run.__name__ = fn.__name__
            return run

        def decode_local():
            return decode_all([p for p, _ in local])

        def decode_bucket():
            return decode_all([p for p, _ in remote])

        def score_local():
            return score_all(local, scorers, flow)

        def score_bucket():
            return score_all(remote, scorers, flow)

        dec = interleave(args.repeats, {"disk": timed(decode_local, "disk"), "bucket": timed(decode_bucket, "bucket")})
        sco = interleave(args.repeats, {"disk": timed(score_local, "disk"), "bucket": timed(score_bucket, "bucket")})
        for name, runs, unit in (("decode", dec, "frames/s"), ("score", sco, "clips/s")):
            print(f"{name}: disk {spread(runs['disk']).text('{:.1f}', ' ' + unit)}, bucket "
                  f"{spread(runs['bucket']).text('{:.1f}', ' ' + unit)}, time on the bucket / on disk "
                  f"{per_repeat(runs['disk'], runs['bucket']).text('{:.2f}')}")
        for name in ("decode_bucket", "score_bucket"):
            t = traffic[name][-1]
            print(f"{name.split('_')[0]} from the bucket: {t['total'] / clips:.2f} requests and "
                  f"{t['bytes'] / clips / 1e6:.2f} MB per clip ({t['bytes'] / total_bytes:.2f}x the sources' bytes; "
                  f"{t.get('GET', 0)} GET, {t.get('HEAD', 0)} HEAD)")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
