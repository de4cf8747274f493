"""`caption-videos INPUT -o OUT_DIR --model MODEL`: caption every clip of a manifest or a folder of raw videos.

INPUT is a clips manifest (.parquet/.jsonl/.csv) or a folder of raw videos, which is split first with the
splitter's defaults into OUT_DIR/split/. Writes OUT_DIR/clips.parquet and OUT_DIR/failed.jsonl. Re-running
the same command finishes what is missing and changes nothing else.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from index.engine import EngineError, add_engine_args, options_from_args
from index.manifest import ManifestError, add_retry_arg, read_manifest, run_cli, write_failed, write_manifest

from .backends import BACKENDS, make_backend
from .frames import FramePolicy
from .models import ALIASES, ModelError, resolve_model
from .pipeline import Captioner, caption_one, decode_unit
from .prompts import PromptError, load_prompt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="caption-videos", description=__doc__.split("\n")[0])
    p.add_argument("input", help="clips manifest (.parquet/.jsonl/.csv) or a folder of raw videos")
    p.add_argument("-o", "--out", required=True, help="output folder (clips.parquet, failed.jsonl)")
    p.add_argument("--model", default="qwen-vl", help=f"alias ({', '.join(ALIASES)}), Hugging Face id or folder")
    p.add_argument("--backend", default="transformers", choices=sorted(BACKENDS))
    p.add_argument("--prompt", default="detailed", help="prompt id from prompts/ or a .txt file")
    frames = p.add_mutually_exclusive_group()
    frames.add_argument("--num-frames", type=int, default=8, help="uniform frames per clip (default 8)")
    frames.add_argument("--sample-fps", type=float, default=None, help="sample frames at this rate instead")
    p.add_argument("--max-frames", type=int, default=32, help="cap on frames per clip with --sample-fps")
    p.add_argument("--max-pixels", type=int, default=None, help="pixels per frame cap (Qwen: 360*420)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per generate call (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--two-pass", action="store_true", help="describe frames one by one, then summarise them")
    p.add_argument("--summary-model", default=None, help="text LLM for the two-pass summary (default: same model)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow models that run their own code")
    p.add_argument("--detector", default=None, help="shot detector when INPUT is a folder (splitter default)")
    p.add_argument("--min-sec", type=float, default=None, help="shortest clip when INPUT is a folder")
    p.add_argument("--max-sec", type=float, default=None, help="longest clip when INPUT is a folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_retry_arg(p)
    add_engine_args(p, "source videos")
    return p


def load_input(src: Path, out_dir: Path, split_options: dict | None = None) -> tuple:
    """(manifest DataFrame, failures of the split step)."""
    if src.is_dir():
        from splitter import split_videos  # the splitter's public entry point

        options = {k: v for k, v in (split_options or {}).items() if v is not None}
        df, failures = split_videos(src, out_dir / "split", **options)
        return df, list(failures)
    if not src.exists():
        raise ManifestError(f"{src}: no such file or folder")
    return read_manifest(src), []


def _progress(total: int, quiet: bool):
    if quiet:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("captioning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   transient=True)
    task = bar.add_task("clips", total=total)
    return bar, lambda n: bar.advance(task, n)


def print_summary(summary, failures, out_path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="caption-videos", show_header=False)
    rows = [("clips", summary.clips), ("captioned now", summary.captioned), ("already done", summary.skipped),
            ("flagged (failed checks after a retry)", summary.flagged), ("output tokens", summary.output_tokens),
            ("tokens/s", f"{summary.tokens_per_s:.1f}"), ("failures", len(failures)),
            ("time split (s)", ", ".join(f"{k[:-2]} {v}" for k, v in summary.timings.items()) or "-"),
            ("manifest", str(out_path))]
    for k, v in rows:
        t.add_row(k, str(v))
    Console(stderr=True).print(t)


def build_captioner(args, spec, prompt, policy, load: bool = True) -> Captioner:
    backend = make_backend(args.backend, spec, batch_size=args.batch_size, device=args.device,
                           trust_remote_code=args.trust_remote_code, max_pixels=args.max_pixels)
    if load:
        backend = backend.load()
    two_pass = None
    if args.two_pass:
        from .twopass import TwoPass

        two_pass = TwoPass.create(backend, args.summary_model, trust_remote_code=args.trust_remote_code, load=load)
    return Captioner(backend, prompt, policy, args.max_new_tokens, two_pass=two_pass)


def actor_worker(args, spec, prompt, policy):
    """Runs inside each Ray actor: the model is loaded once there."""
    return partial(caption_one, build_captioner(args, spec, prompt, policy))


def with_processor(captioner: Captioner):
    """The driver's captioner for Ray decode tasks: the processor alone (frame sizes), no model; None when the
    backend cannot say its frame sizes without the model (the actors then decode)."""
    backend = captioner.backend
    if not hasattr(backend, "processor"):
        return None
    from transformers import AutoProcessor

    from .models import ensure_available, missing_weights_message

    ensure_available(backend.spec)  # a missing model is this process's one-line error, not every actor's
    try:
        backend.processor = AutoProcessor.from_pretrained(backend.spec.model_id,
                                                          trust_remote_code=backend.trust_remote_code)
    except OSError:
        raise ModelError(missing_weights_message(backend.spec.model_id)) from None
    return captioner


def main(argv=None) -> int:
    return run_cli("caption-videos", _main, argv)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out)
    try:
        spec = resolve_model(args.model, args.trust_remote_code)
        prompt = load_prompt(args.prompt)
        policy = FramePolicy(num_frames=args.num_frames, sample_fps=args.sample_fps, max_frames=args.max_frames)
        split_options = dict(detector=args.detector, min_sec=args.min_sec, max_sec=args.max_sec,
                             progress=not args.quiet, retry_failed=args.retry_failed)
        df, split_failures = load_input(Path(args.input), out_dir, split_options)
    except (ModelError, PromptError, ManifestError, ValueError) as e:
        print(f"caption-videos: error: {e}", file=sys.stderr)
        return 2
    if not len(df):
        write_failed(out_dir, split_failures)
        print("caption-videos: no clips to caption", file=sys.stderr)
        return 1
    try:
        engine = options_from_args(args)
        remote = engine.engine == "ray"  # the model is loaded in the actors, not here
        captioner = build_captioner(args, spec, prompt, policy, load=not remote)
        make_worker = partial(actor_worker, args, spec, prompt, policy) if remote else None
        decoder = with_processor(captioner) if remote and not args.summary_model else None
        prepare = partial(decode_unit, decoder) if decoder is not None else None
    except (ModelError, PromptError, ValueError) as e:
        print(f"caption-videos: error: {e}", file=sys.stderr)
        return 2
    bar, advance = _progress(len(df), args.quiet)
    try:
        if bar is not None:
            bar.start()
        merged, failures, summary = captioner.run(df, out_dir, progress=advance, engine=engine,
                                                  make_worker=make_worker, prepare=prepare,
                                                  retry_failed=args.retry_failed)
    except (ManifestError, EngineError) as e:  # e.g. the folder holds a run made with other options
        print(f"caption-videos: error: {e}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.stop()
    failures = sorted(split_failures + failures, key=lambda r: (r["path"], r["stage"], r["reason"]))
    out_path = out_dir / "clips.parquet"
    write_manifest(merged, out_path)
    write_failed(out_dir, failures)
    print_summary(summary, failures, out_path)
    captions = merged["caption"].notna().sum() if "caption" in merged.columns else 0
    return 0 if captions or not len(df) else 1


if __name__ == "__main__":
    sys.exit(main())
