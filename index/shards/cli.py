"""`build-shards MANIFEST -o SHARDS_DIR`: filter, deduplicate and write the clips in a training format."""

from __future__ import annotations

import argparse
import sys

from ..engine import add_engine_args, options_from_args
from ..manifest import ManifestError, read_manifest
from ..dedup.cli import _error



def shards_main(argv=None) -> int:
    from .build import build_shards, parse_size
    from .card import write_card

    ap = argparse.ArgumentParser(prog="build-shards", description="WebDataset shards + index.parquet + DATA_CARD.md")
    ap.add_argument("manifest")
    ap.add_argument("-o", "--out", required=True, help="SHARDS_DIR")
    ap.add_argument("--index", default=None, help="INDEX_DIR from index-clips: drop clips with keep=False")
    ap.add_argument("--no-dedup", action="store_true", help="keep duplicates")
    ap.add_argument("--shard-size", default="1GB")
    ap.add_argument("--format", choices=["webdataset", "opensora-csv"], default="webdataset")
    ap.add_argument("--name", default=None, help="dataset name for the data card")
    ap.add_argument("--card-template", default=None, help="data card template (default: data_cards/TEMPLATE.md)")
    add_engine_args(ap, "source videos")
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.progress import Progress
    console = Console(stderr=True)
    try:
        df = read_manifest(args.manifest)
        size = parse_size(args.shard_size)
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("cutting clips", total=len(df))
            rep = build_shards(df, args.out, args.index, not args.no_dedup, size, args.format,
                               progress=lambda n: bar.advance(task, n), engine=options_from_args(args))
        write_card(args.out, df, rep, index_dir=args.index, name=args.name, template=args.card_template)
    except (ManifestError, ValueError, OSError) as e:
        return _error(e, "build-shards")
    dropped = ", ".join(f"{n} {why}" for why, n in rep.dropped.items()) or "none"
    console.print(f"{rep.samples} clips in {len(rep.shards) or args.format} shards under {args.out}; "
                  f"failed {len(rep.failures)} (failed.jsonl); dropped: {dropped}")
    return 0 if rep.samples or not len(df) else 1




if __name__ == "__main__":
    sys.exit(shards_main())
