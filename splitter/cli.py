"""`split-videos RAW_DIR -o OUT_DIR`: shot-split every video under RAW_DIR into clips.parquet."""

from __future__ import annotations

import argparse
import json
import sys

from index import storage
from index.engine import UsageError, add_engine_args, options_from_args
from index.manifest import add_retry_arg, run_cli

from .detectors import DEFAULT_DETECTOR, DETECTORS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="split-videos", description=__doc__.split(":", 1)[1].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("raw_dir", help="folder of raw videos, walked recursively (or a URL: s3://bucket/raw)")
    p.add_argument("-o", "--out", required=True, help="output folder or URL: clips.parquet, failed.jsonl, clips/")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, choices=sorted(DETECTORS),
                   help="shot detector: transnetv2 finds fades and dissolves; the PySceneDetect ones are faster")
    p.add_argument("--detector-options", default="{}", metavar="JSON",
                   help='options for the detector, e.g. \'{"threshold": 0.4}\'')
    p.add_argument("--min-sec", type=float, default=2.0, help="drop clips shorter than this (seconds)")
    p.add_argument("--max-sec", type=float, default=20.0,
                   help="cut longer shots into near-equal chunks (seconds; 0: no limit)")
    p.add_argument("--trim-frames", type=int, default=1, help="frames dropped at each shot edge")
    p.add_argument("--cut", action="store_true", help="also write each clip as OUT_DIR/clips/CLIP_ID.mp4")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--rehash", action="store_true",
                   help="hash every source again instead of trusting the cached hashes of unchanged files")
    add_retry_arg(p)
    add_engine_args(p, "videos")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return run_cli("split-videos", _main, argv)


def _main(argv=None) -> int:
    args = parse_args(argv)
    from rich.console import Console

    from .pipeline import split_videos

    console = Console(stderr=True, soft_wrap=True)  # one failure per line, never wrapped
    try:
        try:
            options = json.loads(args.detector_options)
        except ValueError:
            options = None
        if not isinstance(options, dict):
            raise UsageError(f"--detector-options must be a JSON object, got {args.detector_options!r}")
        summary: dict = {}
        manifest, failures = split_videos(args.raw_dir, args.out, detector=args.detector, workers=args.workers,
                                    min_sec=args.min_sec, max_sec=args.max_sec, trim_frames=args.trim_frames,
                                    cut=args.cut, detector_options=options, progress=not args.no_progress,
                                    summary=summary, engine=options_from_args(args, not args.no_progress),
                                    retry_failed=args.retry_failed, rehash=args.rehash)
    except UsageError as e:
        console.print(f"split-videos: error: {e}", markup=False)
        return 2
    console.print(
        f"videos {summary['videos']} (split now {summary['processed']}, already done {summary['skipped']}, "
        f"exact copies {summary['copies']}) | "
        f"clips {summary['clips']} | hours {summary['hours']:.3f} | failures {summary['failures']}",
        markup=False)
    out = storage.location(args.out)
    console.print(f"manifest: {out / 'clips.parquet'}   failures: {out / 'failed.jsonl'}"
                  + (f"   copies: {out / 'copies.jsonl'}" if summary["copies"] else ""), markup=False)
    for f in failures[:10]:
        console.print(f"  failed: {f['path']}: {f['reason']}", markup=False)
    if len(failures) > 10:
        console.print(f"  ... {len(failures) - 10} more in failed.jsonl", markup=False)
    if summary["videos"] == 0:
        console.print(f"split-videos: no video files under {args.raw_dir}", markup=False)
        return 1
    if summary["clips"] == 0:
        console.print("split-videos: no clip could be made from any video", markup=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
