"""`build-shards MANIFEST -o OUT`: choose clips (flags, --where, --keep-top, dedup), cut them, write a format.

Dedup is on by default: without --index, build-shards builds (or, on a re-run, reuses) an index of the manifest
in OUT/index with index-clips' defaults and drops exact copies and near-duplicates; --index uses an index made
by index-clips instead; --no-dedup ships duplicates. Flagged captions are dropped unless --allow-flags names
their flags. Mistakes in the command (an unknown column, a bad fraction, an output folder holding another
export) are one line and exit status 2, before any work; a second run on the same folder waits for nothing:
it says who holds the folder and exits 2. MANIFEST and OUT may be URLs (s3://, gs://, az://).
"""

from __future__ import annotations

import argparse
import math
import sys

from .. import query, storage
from ..engine import add_engine_args, options_from_args
from ..files import OutputLock, command_line
from ..manifest import ManifestError, manifest_folder, run_cli

PROG = "build-shards"


def parser() -> argparse.ArgumentParser:
    from .formats import WRITERS

    formats = "; ".join(f"{name}: {w.help}" for name, w in WRITERS.items())
    ap = argparse.ArgumentParser(prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description="Filter and deduplicate a captioned manifest, cut its clips and write "
                                             "them in a training format, with index.parquet and DATA_CARD.md.")
    ap.add_argument("manifest", help="clips.parquet (or .jsonl/.csv) from caption-videos or score-clips")
    ap.add_argument("-o", "--out", required=True, help="output folder or URL (created; a re-run resumes it)")
    ap.add_argument("--format", choices=list(WRITERS), default="webdataset", help=f"what to write. {formats}")
    ap.add_argument("--where", default=None, metavar="EXPR",
                    help="keep clips for which EXPR holds: comparisons of manifest columns with numbers or quoted "
                         "text, joined by and/or/not, parentheses, COL in (\"a\", \"b\"); e.g. "
                         "\"aesthetic >= 5 and motion > 0.3 and text_area < 0.02\"")
    ap.add_argument("--keep-top", action="append", default=[], metavar="COL:FRACTION",
                    help="keep the best FRACTION of the clips left by COL (highest first), e.g. aesthetic:0.8; "
                         "repeatable, applied in order after --where")
    ap.add_argument("--allow-flags", default=None, metavar="LIST",
                    help="comma-separated caption flags to keep (e.g. truncated,loop; 'all' keeps every flagged "
                         "caption); clips with any other flag are dropped (None: no flag is allowed)")
    ap.add_argument("--index", default=None, metavar="INDEX_DIR",
                    help="dedup with this index-clips folder (clips it does not hold are dropped) instead of "
                         "building OUT/index")
    ap.add_argument("--no-dedup", action="store_true", help="ship exact copies and near-duplicates too")
    ap.add_argument("--shard-size", default="1GB", help="webdataset: largest shard (1GB, 500MB, ...)")
    ap.add_argument("--fps", type=float, default=None,
                    help="clip option: write every clip at this frame rate (nearest source frames; a slower "
                         "source is reported, never stretched); default: the source's rate")
    ap.add_argument("--frames-4k1", action="store_true",
                    help="clip option: cut each clip to its first 4k+1 frames (Wan, HunyuanVideo, LTX-Video)")
    ap.add_argument("--side-multiple", type=int, default=None, metavar="N",
                    help="clip option: centre-crop width and height down to multiples of N (16 or 32)")
    ap.add_argument("--rehash", action="store_true",
                    help="hash every source again instead of trusting the hashes cached by (path, size, mtime)")
    ap.add_argument("--name", default=None, help="dataset name for the data card (default: the folder name)")
    ap.add_argument("--license", default="other", help="licence id for the data card's front matter")
    ap.add_argument("--card-template", default=None, help="data card template (default: data_cards/TEMPLATE.md)")
    add_engine_args(ap, "source videos")
    return ap


def _usage(msg) -> int:
    print(f"{PROG}: error: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2


def shards_main(argv=None) -> int:
    return run_cli(PROG, _main, argv)


def _main(argv=None) -> int:
    with query.connect() as con:  # the manifest is streamed from it for the whole command
        return _run(con, argv)


def open_manifest(con, path):
    """`index.query.Input` over the manifest; a file that is no readable manifest is one line (ManifestError)."""
    import duckdb
    import pyarrow as pa

    from .stage import STAGE

    try:
        return query.Input(con, path, STAGE)
    except (pa.ArrowException, duckdb.Error) as e:
        raise ManifestError(f"{path}: cannot read manifest ({type(e).__name__}: {' '.join(str(e).split())[:200]})") \
            from None


def _run(con, argv) -> int:
    from .build import ShardsError, build_shards, check_output, flag_summary
    from .names import parse_size
    from .select import column_types
    from .stage import ClipOptions
    from .where import WhereError, kinds_of_sql, parse_keep_top, parse_where

    args = parser().parse_args(argv)
    out = storage.location(args.out)
    try:  # every user mistake is found here, before any work
        try:
            size = parse_size(args.shard_size)
        except ValueError as e:
            raise ValueError(f"--shard-size: {e}") from None
        storage.check_store(args.manifest, "input")
        storage.check_store(args.out, "output")
        inp = open_manifest(con, args.manifest)
        kinds = kinds_of_sql(column_types(con, "input"))
        where = parse_where(args.where, kinds) if args.where is not None else None
        tops = [parse_keep_top(t, kinds) for t in args.keep_top]
        if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
            raise ValueError(f"--fps must be a positive number, not {args.fps:g}")
        if args.side_multiple is not None and args.side_multiple < 2:
            raise ValueError(f"--side-multiple must be at least 2, not {args.side_multiple}")
        if args.index and args.no_dedup:
            raise ValueError("--index and --no-dedup together: choose one")
        if args.index and not storage.exists(storage.location(args.index) / "clips.parquet"):
            raise ValueError(f"{args.index}: not an index folder (no clips.parquet); run index-clips first")
        captioned = "caption" in kinds and query.scalar(con, "SELECT count(caption) FROM input")
        if inp.count and not captioned:
            raise ValueError(f"{args.manifest}: no clip has a caption; run caption-videos on it first")
        opts = ClipOptions(args.fps, args.frames_4k1, args.side_multiple)
        engine = options_from_args(args)
        check_output(out, args.format, opts)
        flags = tuple(f.strip() for f in (args.allow_flags or "").split(",") if f.strip())
    except (ManifestError, WhereError, ShardsError, ValueError) as e:
        return _usage(e)

    storage.makedirs(out)
    with OutputLock(out, command_line(), "build-shards"):
        index_dir = args.index
        if not args.index and not args.no_dedup:
            index_dir = _auto_index(args.manifest, out / "index", engine)
        try:
            report = build_shards(inp, out, index_dir=index_dir, dedup=not args.no_dedup, shard_size=size,
                                  fmt=args.format, engine=engine, where=where, keep_tops=tops, allow_flags=flags,
                                  clip_options=opts, source=str(args.manifest),
                                  hashes_also=[manifest_folder(args.manifest)],
                                  require_indexed=bool(args.index), rehash=args.rehash)
        except ShardsError as e:
            return _usage(e)
        _card(report, args, index_dir)
    _summary(report, args, flag_summary)
    failed_all = report.samples == 0 and report.dropped.get("failed", 0) == report.selection.input_rows > 0
    return 1 if failed_all else 0


def _auto_index(manifest, index_dir, engine):
    """OUT/index with index-clips' defaults (reused by a re-run); None when no clip could be embedded."""
    from ..dedup.cli import build_index

    try:
        build_index(manifest, index_dir, engine=engine)
    except ManifestError as e:  # nothing could be embedded: the cut will record why, clip by clip
        print(f"{PROG}: dedup index: {e}; going on without dedup", file=sys.stderr)
        return None
    return index_dir


def _card(report, args, index_dir) -> None:
    from .card import write_card
    from .formats import WRITERS

    info = WRITERS[args.format]().describe(report.samples, report.files, storage.location(args.out))
    info.files = sorted(set(info.files) | set(report.files))
    write_card(args.out, report, info, manifest=args.manifest, index_dir=index_dir, name=args.name,
               license=args.license, template=args.card_template)


def _summary(report, args, flag_summary) -> None:
    out = storage.text(args.out)
    where = f"{len(report.shards)} shards" if report.shards else f"{len(report.files)} files"
    parts = []
    for kind, n in report.dropped.items():
        detail = flag_summary(report.selection) if kind == "flagged" else ""
        parts.append(f"{n} {kind}" + (f" ({detail})" if detail else ""))
    kept = {f: c["kept"] for f, c in report.selection.flags.items() if c["kept"]}
    if kept and "flagged" not in report.dropped:
        parts.append(f"kept flagged: {', '.join(f'{f} {n}' for f, n in sorted(kept.items()))}")
    failed = f" (reasons in {out.rstrip('/')}/failed.jsonl)" if report.failures else ""
    print(f"{PROG}: {report.samples} clips ({report.hours:.2f} h) as {report.format} in {out} ({where}); "
          f"dropped: {', '.join(parts) or 'none'}{failed}; card: {out.rstrip('/')}/DATA_CARD.md", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(shards_main())
