"""The README's first command: the demo runs every stage end to end and leaves each output behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path):
    exe = Path(sys.executable).with_name("shotcap-demo")
    out = tmp_path / "demo"
    r = subprocess.run([str(exe), "-o", str(out), "--videos", "1", "--seconds", "7", "--steps", "2"],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    clips = pd.read_parquet(out / "captioned" / "clips.parquet")
    assert len(clips) >= 2 and clips.caption.notna().all()
    assert (out / "shards" / "index.parquet").exists() and list((out / "shards").glob("*.tar"))
    assert (out / "shards" / "DATA_CARD.md").read_text().startswith("---")
    assert (out / "sample.mp4").stat().st_size > 0
    assert "sample video" in r.stdout
