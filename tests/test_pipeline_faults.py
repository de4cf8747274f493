"""The whole pipeline as a user runs it (one subprocess per command): raw videos -> split-videos ->
caption-videos (tiny random VLM) -> index-clips -> build-shards -> a few training steps.

Then every stage is killed with SIGKILL at a point drawn from a seeded generator (after its k-th finished
unit) and re-run: its outputs are identical to the uninterrupted run's. The bad-input corpus, a source deleted
between stages, a hand-edited manifest with a bad row and an output folder that cannot be written go through
the stages: one-line errors, nothing lost, no partial file left behind.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from index.manifest import read_failed, read_manifest, write_manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SEED = 20240606
CAPTION = ["--num-frames", "4", "--max-new-tokens", "8", "--batch-size", "4", "--quiet"]
SHARDS_MAIN = "import sys; from index.cli import shards_main; sys.exit(shards_main(sys.argv[1:]))"
TRAIN = ["data.buckets=[[4,16,16]]", "data.batch_size=2", "text.max_length=8", "optim.warmup_steps=1",
         "train.ckpt_every=2", "train.log_every=1"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def commands(work: Path, raw: Path, model: Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "split": [py, "-m", "splitter.cli", str(raw), "-o", str(work / "split"), "--detector", "content",
                  "--no-progress"],
        "caption": [py, "-m", "captioner.cli", str(work / "split" / "clips.parquet"), "-o", str(work / "cap"),
                    "--model", str(model), *CAPTION],
        "index": [py, "-m", "index.cli", str(work / "cap" / "clips.parquet"), "-o", str(work / "idx")],
        "shards": [py, "-c", SHARDS_MAIN, str(work / "cap" / "clips.parquet"), "-o", str(work / "shards"),
                   "--index", str(work / "idx"), "--shard-size", "40KB"],
    }


# what each stage writes, and the file that appears when one of its units is finished
OUTPUT = {"split": "split", "caption": "cap", "index": "idx", "shards": "shards"}
UNIT_DONE = {"split": "split/.parts/split/*.parquet", "caption": "cap/.parts/*/*.parquet",
             "index": "idx/.parts/embed/*.parquet", "shards": "shards/.staging/*.mp4"}
STAGES = list(OUTPUT)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env(), cwd=REPO, **kw)


def run_ok(cmd) -> subprocess.CompletedProcess:
    proc = run(cmd)
    assert proc.returncode == 0, f"{cmd[1:4]} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def kill_after(cmd, work: Path, pattern: str, k: int) -> int:
    """Start `cmd`, SIGKILL it once `k` units are finished; returns the exit status (-9 when killed)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(), cwd=REPO)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if len(list(work.glob(pattern))) >= k:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    return proc.wait()


def leftovers(folder: Path) -> list[str]:
    """Temp files of an interrupted atomic write (`.NAME.XXXX.tmp`, `.NAME.tmp`)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


# ---------------------------------------------------------------- comparisons

def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert sorted(a.columns) == sorted(b.columns)
    cols = sorted(a.columns)
    a = a[cols].sort_values("clip_id", kind="stable").reset_index(drop=True)
    b = b[cols].sort_values("clip_id", kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


def assert_same_output(stage: str, ref: Path, work: Path) -> None:
    a, b = ref / OUTPUT[stage], work / OUTPUT[stage]
    if stage in ("split", "caption", "index"):
        same_rows(read_manifest(a / "clips.parquet"), read_manifest(b / "clips.parquet"))
        assert read_failed(a) == read_failed(b)
    if stage == "index":
        for name in ("visual.npy", "text.npy"):
            assert np.array_equal(np.load(a / name), np.load(b / name)), name
        assert (a / "visual.faiss").read_bytes() == (b / "visual.faiss").read_bytes()
    if stage == "shards":
        tars = sorted(p.name for p in a.glob("*.tar"))
        assert tars == sorted(p.name for p in b.glob("*.tar"))
        for name in tars:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
        pd.testing.assert_frame_equal(pd.read_parquet(a / "index.parquet"), pd.read_parquet(b / "index.parquet"))
        assert not (b / ".staging").exists()


# ---------------------------------------------------------------- the uninterrupted run

@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    from captioner.testing import build_tiny_model

    return Path(build_tiny_model("qwen2-vl", tmp_path_factory.mktemp("tiny_vlm")))


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    from index import synth

    folder = tmp_path_factory.mktemp("raw")
    synth.make_sample_videos(folder, count=3, seconds=6.0, size=(96, 64))
    return folder


@pytest.fixture(scope="module")
def reference(raw, tiny_vlm, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("reference")
    for stage, cmd in commands(work, raw, tiny_vlm).items():
        run_ok(cmd)
    return work


def test_uninterrupted_run_gives_captioned_shards_that_train(reference, tmp_path):
    clips = read_manifest(reference / "cap" / "clips.parquet")
    assert len(clips) >= 3 and clips["caption"].map(lambda c: isinstance(c, str) and bool(c)).all()
    index = pd.read_parquet(reference / "shards" / "index.parquet")
    assert sorted(index["clip_id"]) == sorted(clips["clip_id"])
    assert len(list((reference / "shards").glob("*.tar"))) >= 2  # small shards: several files
    out = tmp_path / "run"
    run_ok([sys.executable, "-m", "trainer.train", "--config", str(REPO / "trainer" / "configs" / "tiny.yaml"),
            "--data", str(reference / "shards"), "--max-steps", "2", "--output-dir", str(out), *TRAIN])
    assert (out / "checkpoints" / "2" / "ema" / "diffusion_pytorch_model.safetensors").exists()
    assert "loss" in (out / "metrics.jsonl").read_text()


@pytest.mark.parametrize("stage", STAGES)
def test_kill_at_a_random_point_then_rerun_gives_the_same_outputs(stage, reference, raw, tiny_vlm, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for earlier in STAGES[:STAGES.index(stage)]:  # the inputs of this stage, as the reference made them
        shutil.copytree(reference / OUTPUT[earlier], work / OUTPUT[earlier])
    if stage == "shards":  # staged clips are removed once the shards are written
        units = len(pd.read_parquet(reference / "shards" / "index.parquet"))
    else:
        units = len(list(reference.glob(UNIT_DONE[stage])))
    k = random.Random(f"{SEED}-{stage}").randint(1, max(1, units - 1))
    cmd = commands(work, raw, tiny_vlm)[stage]
    status = kill_after(cmd, work, UNIT_DONE[stage], k)
    assert status == -signal.SIGKILL, f"{stage} finished before the kill point ({k} of {units} units)"
    run_ok(cmd)
    assert_same_output(stage, reference, work)
    assert leftovers(work / OUTPUT[stage]) == []
