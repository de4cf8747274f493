"""`caption-videos INPUT -o OUT_DIR --model MODEL`: caption every clip of a manifest or a folder of raw videos.

INPUT is a clips manifest (.parquet/.jsonl/.csv) or a folder of raw videos, which is split first with the
splitter's defaults into OUT_DIR/split/. Writes OUT_DIR/clips.parquet and OUT_DIR/failed.jsonl. Re-running
the same command finishes what is missing and changes nothing else.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial



from index import query, storage
from index.engine import UsageError, add_engine_args, options_from_args, run_stage
from index.files import HashCache, OutputLock, command_line
from index.manifest import (ManifestError, PartStore, add_retry_arg, manifest_files, manifest_folder, run_cli,
                            write_failed, write_provenance, write_stream)

from .backends import BACKENDS, make_backend
from .frames import FramePolicy
from .models import ALIASES, ModelError, ensure_available, resolve_model

DEFAULT_MODEL = "qwen-vl"
from .pipeline import CaptionStage, Captioner, stage_name
from .prompts import PromptError, load_prompt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="caption-videos", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", help="clips manifest (.parquet/.jsonl/.csv) or a folder of raw videos")
    p.add_argument("-o", "--out", required=True, help="output folder (clips.parquet, failed.jsonl)")
    p.add_argument("--model", default=None,
                   help=f"alias ({', '.join(ALIASES)}), Hugging Face id or local folder (default: {DEFAULT_MODEL} = "
                        f"{ALIASES[DEFAULT_MODEL].model_id}, downloaded from the hub on first use, about 16 GB)")
    p.add_argument("--backend", default="transformers", choices=sorted(BACKENDS), help="how the model runs")
    p.add_argument("--prompt", default="detailed", help="prompt id from prompts/ or a .txt file")
    frames = p.add_mutually_exclusive_group()
    frames.add_argument("--num-frames", type=int, default=8, help="uniform frames per clip")
    frames.add_argument("--sample-fps", type=float, default=None, help="sample frames at this rate instead")
    p.add_argument("--max-frames", type=int, default=32, help="cap on frames per clip with --sample-fps")
    p.add_argument("--max-pixels", type=int, default=None, help="pixels per frame cap (Qwen default: 360*420)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per generate call")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest caption, in tokens")
    p.add_argument("--two-pass", action="store_true", help="describe frames one by one, then summarise them")
    p.add_argument("--summary-model", default=None, help="text LLM for the two-pass summary (default: same model)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow models that run their own code")
    p.add_argument("--detector", default=None, help="shot detector when INPUT is a folder (splitter default)")
    p.add_argument("--min-sec", type=float, default=None, help="shortest clip when INPUT is a folder")
    p.add_argument("--max-sec", type=float, default=None, help="longest clip when INPUT is a folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--rehash", action="store_true",
                   help="hash every source again instead of trusting the cached hashes of unchanged files")
    add_retry_arg(p)
    add_engine_args(p, "source videos")
    return p


def load_input(con, src, out_dir, split_options: dict | None = None) -> tuple:
    """(the input as `index.query.Input`, failures of the split step or of rows that cannot be used, folder of
    the manifest). A folder of raw videos (or a URL of one) is split first into OUT_DIR/split/."""
    if storage.is_dir(src) and manifest_folder(src) == src:
        from splitter import split_videos  # the splitter's public entry point

        options = {k: v for k, v in (split_options or {}).items() if v is not None}
        manifest, failures = split_videos(src, out_dir / "split", **options)
        inp = query.Input(con, manifest, "caption")
        return inp, list(failures) + inp.failures, out_dir / "split"
    if not storage.exists(src):
        raise ManifestError(f"{src}: no such file or folder")
    inp = query.Input(con, src, "caption")
    return inp, inp.failures, manifest_folder(src)


def print_summary(counts: dict, failures, out_path, timings: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="caption-videos", show_header=False)
    rows = [("clips", counts["clips"]), ("captioned now", counts["captioned"]), ("already done", counts["skipped"]),
            ("flagged (failed checks after a retry)", counts["flagged"]), ("output tokens (now)", counts["tokens"]),
            ("tokens/s", f"{counts['tokens'] / counts['seconds']:.1f}" if counts["seconds"] else "-"),
            ("failures", len(failures)),
            ("time split (s)", ", ".join(f"{k[:-2]} {v:.2f}" for k, v in timings.items()) or "-"),
            ("manifest", str(out_path)), ("failures list", str(out_path.parent / "failed.jsonl"))]
    for k, v in rows:
        t.add_row(k, str(v))
    Console(stderr=True).print(t)
    for f in failures[:10]:
        print(f"  failed: {f['path']}: {f['reason']}", file=sys.stderr)
    if len(failures) > 10:
        print(f"  ... {len(failures) - 10} more in {out_path.parent / 'failed.jsonl'}", file=sys.stderr)


def build_captioner(args, spec, prompt, policy, load: str | None = "model") -> Captioner:
    """The captioner with its model loaded (`load="model"`: a worker), with the processor alone (`"processor"`:
    frame sizes for the Ray decode tasks), or with nothing loaded (`None`: the driver's options and provenance)."""
    backend = make_backend(args.backend, spec, batch_size=args.batch_size, device=args.device,
                           trust_remote_code=args.trust_remote_code, max_pixels=args.max_pixels)
    if load == "model":
        backend = backend.load()
    elif load == "processor" and hasattr(backend, "processor"):
        from transformers import AutoProcessor

        from .models import missing_weights_message

        ensure_available(spec)
        try:
            backend.processor = AutoProcessor.from_pretrained(spec.model_id, trust_remote_code=args.trust_remote_code)
        except OSError:
            raise ModelError(missing_weights_message(spec.model_id)) from None
    two_pass = None
    if args.two_pass:
        from .twopass import TwoPass

        two_pass = TwoPass.create(backend, args.summary_model, trust_remote_code=args.trust_remote_code,
                                  load=load == "model")
    return Captioner(backend, prompt, policy, args.max_new_tokens, two_pass=two_pass)


def main(argv=None) -> int:
    return run_cli("caption-videos", _main, argv)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out_dir, src = storage.location(args.out), storage.location(args.input)
        storage.check_store(src, "input")
        storage.check_store(out_dir, "output")
        if not storage.exists(src):
            raise ManifestError(f"{args.input}: no such file or folder")
        spec = resolve_model(args.model or DEFAULT_MODEL, args.trust_remote_code)
        prompt = load_prompt(args.prompt)
        policy = FramePolicy(num_frames=args.num_frames, sample_fps=args.sample_fps, max_frames=args.max_frames)
        for name in ("batch_size", "max_new_tokens", "max_pixels"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
        engine = options_from_args(args, not args.quiet)
        ensure_available(spec)  # offline and not in the cache: one line now, not after the split
    except (ModelError, PromptError, UsageError) as e:
        default = "" if args.model else f"no --model given, so the default {DEFAULT_MODEL} is used: "
        print(f"caption-videos: error: {default}{e}", file=sys.stderr)
        return 2
    except ValueError as e:  # FramePolicy's checks
        print(f"caption-videos: error: {e}", file=sys.stderr)
        return 2
    try:
        with OutputLock(out_dir, command_line(), "caption-videos"), query.connect() as con:
            split_options = dict(detector=args.detector, min_sec=args.min_sec, max_sec=args.max_sec,
                                 progress=not args.quiet, retry_failed=args.retry_failed, engine=engine)
            inp, input_failures, input_dir = load_input(con, src, out_dir, split_options)
            return _caption(args, spec, prompt, policy, engine, con, inp, input_failures, input_dir, out_dir)
    except (ModelError, PromptError, UsageError) as e:
        print(f"caption-videos: error: {e}", file=sys.stderr)
        return 2


def _caption(args, spec, prompt, policy, engine, con, inp, input_failures, input_dir, out_dir) -> int:
    if not inp.count:
        write_failed(out_dir, input_failures)
        where = (f"the split of {args.input} made no clip" if input_dir == out_dir / "split"
                 else f"{args.input} holds no usable clip")
        print(f"caption-videos: no clips to caption: {where}; reasons in {out_dir / 'failed.jsonl'}", file=sys.stderr)
        for f in input_failures[:10]:
            print(f"  failed: {f['path']}: {f['reason']}", file=sys.stderr)
        return 1
    with HashCache(out_dir, also=[input_dir], rehash=args.rehash) as hashes:
        source_failures = query.check_sources(inp, hashes, "caption")
    remote = engine.engine == "ray"
    captioner = build_captioner(args, spec, prompt, policy, load=None)
    store = PartStore(out_dir, stage_name(captioner.model_id, captioner.prompt_id), captioner.config(),
                      args.retry_failed)
    build = partial(build_captioner, args, spec, prompt, policy)
    before = set(store.files())
    done_before = query.count_done_rows(con, store)
    stage = CaptionStage(con, store, captioner, build, decode_ahead=remote and not args.summary_model)
    stage._total = inp.count - done_before - query.scalar(con, f"SELECT count(*) FROM input WHERE {stage.already()}")
    report = run_stage(stage, store, engine)
    out_path = out_dir / "clips.parquet"
    written = write_stream(query.batches(con, stage.merge(store)), out_path)
    failures = sorted(input_failures + source_failures + query.stage_failures(con, store),
                      key=lambda r: (r["path"], r["stage"], r["reason"]))
    write_failed(out_dir, failures)
    write_provenance(out_dir, "caption", captioner.config(), source=input_dir)
    fresh = [f for f in store.files() if f not in before]
    out_src = query.files_sql(con, manifest_files(out_path))
    names = set(query.names_of(con, f"SELECT * FROM {out_src}"))
    captioned = query.count_rows(con, fresh)
    counts = {"clips": inp.count, "captioned": captioned, "skipped": written - captioned,
              "flagged": query.scalar(con, f"SELECT count(*) FROM {out_src} WHERE coalesce(caption_flags, '') <> ''")
              if "caption_flags" in names else 0,
              "seconds": report.seconds, "tokens": query.sum_column(con, fresh, "caption_tokens")}
    print_summary(counts, failures, out_path, stage.timings())
    captions = query.scalar(con, f"SELECT count(caption) FROM {out_src}") if "caption" in names else 0
    return 0 if captions else 1


if __name__ == "__main__":
    sys.exit(main())
