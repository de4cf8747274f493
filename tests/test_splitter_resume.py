"""kill -9 in the middle of split-videos, then a re-run: the same manifest as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import hostile
from index import synth
from index.manifest import read_failed, read_manifest
from splitter.pipeline import STAGE, split_videos

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kill_then_rerun_gives_the_uninterrupted_manifest(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(4):
        shots, trans = synth.sample_layout(100 + i, seconds=4.0)
        synth.make_video(raw / f"v{i}.mp4", shots, trans, size=(160, 96))
    hostile.text_as_video(raw / "broken.mp4")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "splitter.cli", str(raw), "-o", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / ".parts" / STAGE
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if any(parts.glob("*.parquet")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "clips.parquet").exists()
    assert 1 <= len(list(parts.glob("*.parquet"))) < 4

    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    split_videos(raw, tmp_path / "ref", progress=False)  # uninterrupted
    got, ref = read_manifest(out / "clips.parquet"), read_manifest(tmp_path / "ref" / "clips.parquet")
    assert got["clip_id"].is_unique and len(got) > 4
    pd.testing.assert_frame_equal(got, ref)
    assert read_failed(out) == read_failed(tmp_path / "ref") and len(read_failed(out)) == 1
