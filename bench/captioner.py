"""Captioning throughput on CPU: the caption-videos path against a naive loop (a seek and a full-resolution
decode per clip, batch size 1), measured in the same run, alternating, over several repeats.

    python bench/captioner.py                      # the README's figure: 2 sources of 60 s, 3 repeats
    python bench/captioner.py --videos 1 --seconds 12 --max-new-tokens 32    # a dry run

Both sides caption the same clips with the same random model, prompt, frame indices and token budget (greedy,
one pass, no retries; a random model rarely stops early, so both generate about the full budget), and both
decode on one thread, as `index.video` does. The optimized path is caption-videos' own `Captioner.chunks` (one
sequential decode per source video, resized in the decoder to the model's frame size, the next chunk decoded
in a thread while the model works on this one) plus the transformers backend's batched `generate`. Printed per side:
clips/s, output tokens/s and wall time as the median and spread (min-max) over the repeats, and where the
time went (decode; preprocess = processor + chat template; generate) in seconds and as shares of the wall
time; then the speed-up, taken per repeat, as its median and spread.

Sizing, so that the work resembles a real captioning job. There a 7B VLM on a GPU spends nearly all of a
batch-1 caption in generate (hundreds of tokens at tens of milliseconds each; the prefill of the frames is a
small part of it) and a fraction of a second decoding the clip's frames. A 64-wide model with 32 new tokens
spent its time in per-call overhead instead, and on a shared machine in torch's threads waiting for each
other. The defaults: a 4-layer, 256-wide random Qwen2.5-VL on one torch thread, caption-videos' own budget
of 256 new tokens and 8 frames, 640x360 sources whose frames the tiny processor takes at 12,544 pixels (the
~18x reduction a real processor's 151,200 pixels makes of a 1080p source, with a tenth of the visual tokens,
so that the prefill stays about a tenth of a batch-1 generate here). Measured on a 2-core CPU (43 clips),
the naive loop spends about 91 % of its time in generate, 8 % decoding and 1 % preprocessing; the
caption-videos path about 88 % in generate and 11 % decoding (one decode per source at the model's size, a
larger share since generate got faster). One repeat takes about 40 s (naive) and 13 s (caption-videos); the
whole run about 4.5 minutes, 1.5 of them making the videos and loading the model. The figure is a CPU
figure: on a GPU a decoding step at batch 16 costs little more than at batch 1, so batching gains more
there; on a CPU it costs a few times more.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from _stats import interleave, load_average, per_repeat, repeats_note, spread  # noqa: E402
from captioner.backends import GenerateOptions, Request, make_backend  # noqa: E402
from captioner.frames import FramePolicy  # noqa: E402
from captioner.pipeline import Captioner  # noqa: E402
from captioner.models import resolve_model  # noqa: E402
from captioner.prompts import clip_values, load_prompt  # noqa: E402
from captioner.testing import build_tiny_model  # noqa: E402
from index import Clip, file_sha256, probe, synth  # noqa: E402

PARTS = ("decode_s", "preprocess_s", "generate_s")


def make_clips(folder: Path, videos: int, seconds: float, size: tuple[int, int]) -> pd.DataFrame:
    truths = synth.make_sample_videos(folder, count=videos, seconds=seconds, size=size)
    rows = []
    for name, t in truths.items():
        path = folder / name
        info, sha = probe(path), file_sha256(path)
        for a, b in t.shots:
            rows.append(Clip.from_range(str(path), sha, a, b, a / t.fps, b / t.fps, t.fps,
                                        info.width, info.height).to_dict())
    return pd.DataFrame(rows)


def seek_read(path: str, indices: list[int], fps: float) -> np.ndarray:
    """Baseline reader: open, seek near the clip's first frame, decode forward at full size (one per clip)."""
    out, want = {}, set(indices)
    with av.open(path) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1  # as index.video decodes: one thread, so both sides decode alike
        first = int(min(indices))
        c.seek(int(max(0.0, first / fps - 1.0) / s.time_base), stream=s, backward=True)
        for frame in c.decode(s):  # synthetic videos start at pts 0, so the index follows from the time
            idx = int(round(float(frame.pts * s.time_base) * fps))
            if idx in want:
                out[idx] = frame.to_ndarray(format="rgb24")
            if idx >= max(indices):
                break
    return np.stack([out[i] for i in indices])


def request(row: dict, prompt, frames: np.ndarray, idx: list[int]) -> Request:
    return Request(row["clip_id"], prompt.render(**clip_values(row, len(idx))), frames,
                   frame_indices=[i - int(row["start_frame"]) for i in idx], fps=float(row["fps"]),
                   clip_frames=int(row["num_frames"]))


def run_naive(backend, df, prompt, policy, max_new_tokens) -> dict:
    t = defaultdict(float)
    tokens = 0
    for row in df.to_dict("records"):
        idx = policy.indices(row, backend.frame_count)
        t0 = time.perf_counter()
        frames = seek_read(row["video_path"], idx, float(row["fps"]))
        t["decode_s"] += time.perf_counter() - t0
        req = request(row, prompt, frames, idx)
        tokens += backend.generate([req], GenerateOptions(max_new_tokens))[req.request_id].num_tokens
    return dict(t, tokens=tokens)


def run_fast(backend, df, prompt, policy, max_new_tokens) -> dict:
    """caption-videos' own path: `Captioner.chunks` (one decode per source, the next chunk decoded while the model
    works) and the backend's batched generate (the checks and retries left out, as in the naive loop)."""
    captioner = Captioner(backend, prompt, policy, max_new_tokens)
    tokens = 0
    for path, group in df.groupby("video_path", sort=True):
        rows = group.sort_values("start_frame").to_dict("records")
        for chunk in captioner.chunks(path, rows):
            reqs = captioner.requests([r for r in rows if r["clip_id"] in chunk], chunk)
            for k in range(0, len(reqs), backend.batch_size):
                out = backend.generate(reqs[k:k + backend.batch_size], GenerateOptions(max_new_tokens))
                tokens += sum(o.num_tokens for o in out.values())
    return {"decode_s": backend.stats["decode_s"], "tokens": tokens}


def timed(run, backend, *args) -> dict:
    backend.stats.clear()
    t0 = time.perf_counter()
    r = run(backend, *args)
    r["wall_s"] = time.perf_counter() - t0
    r.update(preprocess_s=backend.stats["preprocess_s"], generate_s=backend.stats["generate_s"])
    return r


def size_arg(v: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in v.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r}: expected WIDTHxHEIGHT, e.g. 640x360") from None
    return w, h


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--videos", type=int, default=2, help="synthetic source videos (a shot every 3 s on average)")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each source")
    ap.add_argument("--size", type=size_arg, default="640x360", help="source size WxH")
    ap.add_argument("--kind", default="qwen2.5-vl", help="tiny model family (captioner.testing.KINDS)")
    ap.add_argument("--hidden", type=int, default=256, help="model width (text and vision)")
    ap.add_argument("--layers", type=int, default=4, help="model depth (text and vision)")
    ap.add_argument("--batch-size", type=int, default=16, help="clips per generate call on the caption-videos path")
    ap.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="tokens generated per clip")
    ap.add_argument("--prompt", default="detailed", help="prompt id")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default, one per core)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per path, alternating; median and spread printed")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        df = make_clips(tmp / "raw", args.videos, args.seconds, args.size)
        model = build_tiny_model(args.kind, tmp / "model", hidden=args.hidden, layers=args.layers)
        spec, prompt = resolve_model(model), load_prompt(args.prompt)
        policy = FramePolicy(num_frames=args.num_frames)
        naive_b = make_backend("transformers", spec, batch_size=1, device="cpu").load()
        fast_b = make_backend("transformers", spec, batch_size=args.batch_size, device="cpu").load()
        frame_w, frame_h = fast_b.frame_size(*args.size)
        first = df[df["video_path"] == df["video_path"].iloc[0]]
        for backend, run in ((naive_b, run_naive), (fast_b, run_fast)):  # warm-up: first-call allocations
            run(backend, first.head(2), prompt, policy, 2)
        setup = time.perf_counter() - t0
        runs = interleave(args.repeats, {
            "naive loop (seek per clip, batch 1)":
                lambda: timed(run_naive, naive_b, df, prompt, policy, args.max_new_tokens),
            f"caption-videos path (batch {args.batch_size})":
                lambda: timed(run_fast, fast_b, df, prompt, policy, args.max_new_tokens),
        })

    n = len(df)
    print(f"\n{n} clips from {args.videos} synthetic {args.size[0]}x{args.size[1]} videos of {args.seconds:g} s; "
          f"random {args.kind} (hidden {args.hidden}, {args.layers} layers), frames {frame_w}x{frame_h}, "
          f"{args.num_frames} per clip, {args.max_new_tokens} new tokens, greedy; CPU, "
          f"torch threads {torch.get_num_threads()}, {load_average()}; setup {setup:.0f} s")
    print(f"{repeats_note(args.repeats)}\n")
    print("| path | clips/s | output tokens/s | wall s | decode s (share) | preprocess s (share) "
          "| generate s (share) |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        cells = [spread(n / r["wall_s"] for r in rs).text(),
                 spread(r["tokens"] / r["wall_s"] for r in rs).text("{:.1f}"), spread(r["wall_s"] for r in rs).text()]
        for part in PARTS:  # the median seconds, and the median share of the wall time
            sec = spread(r[part] for r in rs).median
            share = spread(r[part] / r["wall_s"] for r in rs).median
            cells.append(f"{sec:.2f} ({share:.0%})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    naive, fast = runs.values()
    ratio = per_repeat([r["wall_s"] for r in naive], [r["wall_s"] for r in fast])
    print(f"\nspeed-up (clips/s, per repeat): {ratio.text('{:.2f}', 'x')}  (target >= 3x)")


if __name__ == "__main__":
    main()
