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
from pathlib import Path

import pandas as pd

from index.engine import EngineError, add_engine_args, options_from_args, run_stage
from index.files import HashCache, OutputLock, command_line, remove_own_temps
from index.manifest import (ManifestError, PartStore, add_retry_arg, check_sources, load_manifest, run_cli,
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


def print_summary(out: pd.DataFrame, columns: list[str], counts: dict, failures: list, out_path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=PROG, show_header=False)
    for k, v in [("clips scored now", counts["now"]), ("already scored", counts["before"]),
                 ("clips failed", counts["failed"]), ("failure records", len(failures))]:
        t.add_row(k, str(v))
    for col in columns:
        if col not in out.columns or not len(out):
            continue
        s = out[col]
        if col == "camera_motion":
            share = s.value_counts(normalize=True).head(3)
            t.add_row("camera_motion", ", ".join(f"{k} {v:.0%}" for k, v in share.items()) or "-")
        elif col == "text_static":
            t.add_row("text_static", f"{s.astype(bool).mean():.0%} of clips")
        else:
            t.add_row(f"median {col}", f"{s.median():.4g}" if s.notna().any() else "-")
    t.add_row("manifest", str(out_path))
    Console(stderr=True).print(t)


def main(argv=None) -> int:
    return run_cli(PROG, _main, argv)


def _error(e) -> int:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out_dir, manifest = Path(args.out), Path(args.manifest)
    try:  # every user mistake is found here, before any work
        if not (math.isfinite(args.sample_fps) and args.sample_fps > 0):
            raise ValueError(f"--sample-fps must be a positive number, got {args.sample_fps}")
        if args.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        df, row_failures = load_manifest(manifest, STAGE)
        rows = len(df) + len(row_failures)  # clips of the input manifest
        scorers = select_scorers(
            args.scorers, has_caption="caption" in df.columns, nsfw_asked=args.nsfw_model is not None,
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
        with HashCache(out_dir, also=[manifest.parent]) as hashes:
            df, source_failures = check_sources(df, hashes, STAGE)
        try:
            store = PartStore(out_dir, STAGE, config=config, retry_failed=args.retry_failed)
            stage = ScoreStage(df, store, scorers, out_dir, sample_fps=args.sample_fps, flow_model=args.flow_model,
                               device=args.device, salt=salt, failures=row_failures + source_failures)
            done_before = store.done_ids() & set(df["clip_id"])
            run_stage(stage, store, engine)
        except (ManifestError, EngineError) as e:  # a folder holding another run's parts, no Ray cluster
            return _error(e)
        out, failures = stage.merge(store)
        write_provenance(out_dir, STAGE, config, source=manifest)
    scored = set(out["clip_id"])
    counts = {"now": len(scored - done_before), "before": len(scored & done_before),
              "failed": rows - len(scored)}
    print_summary(out, list(stage.columns), counts, failures, out_dir / "clips.parquet")
    return 0 if len(out) or not rows else 1


if __name__ == "__main__":
    sys.exit(main())
