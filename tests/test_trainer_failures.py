"""A clip that cannot be decoded during training: reported in the log and metrics, never replaced by another."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from index.manifest import read_manifest, write_manifest
from trainer.testing import make_square_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_training_reports_a_corrupt_clip_read_in_a_loader_worker(tmp_path):
    src = make_square_manifest(tmp_path / "d", count=3, frames=4, size=16)
    df = read_manifest(src)
    (tmp_path / "d" / df.loc[1, "video_path"]).write_bytes(b"not a video at all")
    write_manifest(df, tmp_path / "d" / "clips.parquet")
    out = tmp_path / "run"
    # batch size 1: the corrupt clip's batch has no clip left and is skipped; 3 steps = every clip once + 1
    cmd = [sys.executable, "-m", "trainer.train", "--config", str(REPO / "trainer/configs/tiny.yaml"),
           "--data", str(tmp_path / "d" / "clips.parquet"), "--max-steps", "3", "--output-dir", str(out),
           "data.buckets=[[4,16,16]]", "data.batch_size=1", "data.num_workers=1", "text.max_length=8",
           "train.log_every=1", "train.ckpt_every=100"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    line = f"data: clip {df.loc[1, 'clip_id']} could not be read and is not trained on"
    assert line in log and log.count("could not be read and is not trained on") == 1
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["data_failures"] == 1
