"""`score-clips MANIFEST -o OUT_DIR`: measure every clip's quality (motion, camera motion, sharpness,
brightness, on-screen text, bits per pixel; aesthetic, caption match and NSFW with models).

Writes OUT_DIR/clips.parquet (the input rows plus the score columns) and OUT_DIR/failed.jsonl. Each source
video is decoded once for all its clips. Re-running the same command finishes what is missing and changes
nothing else; a manifest with more clips later scores only the new ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys


from index import query, storage
from index.engine import EngineError, add_engine_args, options_from_args, run_stage
from index.files import HashCache, OutputLock, command_line, remove_own_temps
from index.manifest import (ManifestError, PartStore, add_retry_arg, manifest_files, manifest_folder, run_cli,
                            write_provenance)

from .aesthetic import DEFAULT_MODEL as AESTHETIC_MODEL
from .base import SHORT_SIDE
from .flow import make_flow
from .match import DEFAULT_MODEL as MATCH_MODEL
from .models import ModelError
from .nsfw import DEFAULT_MODEL as NSFW_MODEL
from .registry import MODEL_BASED, OFFLINE, SCORERS, select_scorers
from .stage import STAGE, ScoreStage

PROG = "score-clips"


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown where there is one to show (not for flags, nor where the help already says it)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, formatter_class=_Help,
                                description="Measure every clip's quality: motion, camera motion, sharpness, "
                                            "brightness, on-screen text, bits per pixel; aesthetic, caption "
                                            "match and NSFW with models. One decode per source video.")
    p.add_argument("manifest", help="clips manifest (.parquet/.jsonl/.csv) from split-videos or caption-videos")
    p.add_argument("-o", "--out", required=True, metavar="OUT_DIR", help="output folder (clips.parquet, failed.jsonl)")
    p.add_argument("--scorers", default="default", metavar="LIST",
                   help=f"comma list of scorers or their columns ({', '.join(SCORERS)}), 'all', or 'default': "
                        f"{', '.join(OFFLINE)}, plus {', '.join(MODEL_BASED[:2])} when their models are in the "
                        "local cache (nsfw only when asked); 'default,aesthetic' adds a scorer to the defaults "
                        "(its model downloaded if need be)")
    p.add_argument("--sample-fps", type=float, default=2.0, metavar="F",
                   help="frames per second sampled from each clip (at least 3 frames per clip)")
    p.add_argument("--aesthetic-model", default=AESTHETIC_MODEL, metavar="ID",
                   help="CLIP ViT-L/14 model (hub id or folder) whose image embeddings feed the aesthetic MLP")
    p.add_argument("--aesthetic-head", default="auto", metavar="FILE",
                   help="the aesthetic MLP weights (sac+logos+ava1-l14-linearMSE.pth): a file, owner/repo/file "
                        "on the hub, or auto (a head file in the model folder, else the public copy on the hub)")
    p.add_argument("--match-model", default=MATCH_MODEL, metavar="ID", help="CLIP or SigLIP model for text_match")
    p.add_argument("--nsfw-model", default=None, metavar="ID",
                   help=f"image classifier for nsfw; giving it turns nsfw on (with --scorers ...,nsfw or all and "
                        f"no --nsfw-model: {NSFW_MODEL})")
    p.add_argument("--flow-model", default=None, metavar="FILE",
                   help="torchvision RAFT weights (.pth state dict) for motion and camera_motion instead of "
                        "OpenCV DIS flow")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="device for model scorers: cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="frames per model forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    add_retry_arg(p)
    add_engine_args(p, "source videos")
    return p


def print_summary(stats: list[tuple[str, str]], counts: dict, failures: list, out_path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=PROG, show_header=False)
    for k, v in [("clips scored now", counts["now"]), ("already scored", counts["before"]),
                 ("clips failed", counts["failed"]), ("failure records", len(failures))]:
        t.add_row(k, str(v))
    for k, v in stats:
        t.add_row(k, v)
    t.add_row("manifest", str(out_path))
    Console(stderr=True).print(t)


def score_stats(con, path, columns: list[str]) -> list[tuple[str, str]]:
    """One summary line per score of the written manifest, computed by the query engine (streamed)."""
    src = query.files_sql(con, manifest_files(path))
    have = set(query.names_of(con, f"SELECT * FROM {src}"))
    if not con.execute(f"SELECT count(*) FROM {src}").fetchall()[0][0]:
        return []
    out = []
    for col in (c for c in columns if c in have):
        c = query.ident(col)
        if col == "camera_motion":
            top = con.execute(f"SELECT {c}, count(*) * 1.0 / sum(count(*)) OVER () AS f FROM {src} GROUP BY {c} "
                          f"ORDER BY f DESC, {c} LIMIT 3").fetchall()
            out.append(("camera_motion", ", ".join(f"{k} {v:.0%}" for k, v in top) or "-"))
        elif col == "text_static":
            share = con.execute(f"SELECT avg(CAST(coalesce({c}, false) AS DOUBLE)) FROM {src}").fetchall()[0][0]
            out.append(("text_static", f"{share:.0%} of clips"))
        else:
            med = con.execute(f"SELECT median({c}) FROM {src}").fetchall()[0][0]
            out.append((f"median {col}", f"{med:.4g}" if med is not None else "-"))
    return out


def main(argv=None) -> int:
    return run_cli(PROG, _main, argv)


def _error(e) -> int:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with query.connect() as con:
        return _run(args, con)


def _run(args, con) -> int:
    try:  # every user mistake is found here, before any work
        out_dir, manifest = storage.location(args.out), storage.location(args.manifest)
        storage.check_store(manifest, "input")
        storage.check_store(out_dir, "output")
        if not (math.isfinite(args.sample_fps) and args.sample_fps > 0):
            raise ValueError(f"--sample-fps must be a positive number, got {args.sample_fps}")
        if args.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        inp = query.Input(con, manifest, STAGE)
        scorers = select_scorers(
            args.scorers, has_caption="caption" in inp.columns, nsfw_asked=args.nsfw_model is not None,
            aesthetic_model=args.aesthetic_model, aesthetic_head=args.aesthetic_head, match_model=args.match_model,
            nsfw_model=args.nsfw_model or NSFW_MODEL, device=args.device, batch_size=args.batch_size)
        for scorer in scorers:
            scorer.check()
        flow = make_flow(args.flow_model, args.device)
        if hasattr(flow, "check") and any(s.needs_flow for s in scorers):
            flow.check()
        engine = options_from_args(args, progress=not args.quiet)
    except (ManifestError, ModelError, ValueError) as e:
        return _error(e)
    config = {"scorers": [s.name for s in scorers], "sample_fps": args.sample_fps, "short_side": SHORT_SIDE,
              **{k: v for s in scorers for k, v in s.describe().items()}, **flow.describe()}
    salt = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    with OutputLock(out_dir, command_line(), "score-clips"):
        remove_own_temps(out_dir, out_dir / ".parts" / STAGE)
        with HashCache(out_dir, also=[manifest_folder(manifest)]) as hashes:
            source_failures = query.check_sources(inp, hashes, STAGE)
        try:
            store = PartStore(out_dir, STAGE, config=config, retry_failed=args.retry_failed)
            before = query.count_done_rows(con, store)
            stage = ScoreStage(con, store, scorers, out_dir, sample_fps=args.sample_fps, flow_model=args.flow_model,
                               device=args.device, salt=salt, failures=inp.failures + source_failures,
                               total=inp.count - before)
            run_stage(stage, store, engine)
        except (ManifestError, EngineError) as e:  # a folder holding another run's parts, no Ray cluster
            return _error(e)
        scored, failures = stage.merge(store)
        write_provenance(out_dir, STAGE, config, source=manifest)
    counts = {"now": scored - before, "before": before, "failed": inp.rows - scored}
    print_summary(score_stats(con, out_dir / "clips.parquet", list(stage.columns)), counts, failures,
                  out_dir / "clips.parquet")
    return 0 if scored or not inp.rows else 1


if __name__ == "__main__":
    sys.exit(main())
