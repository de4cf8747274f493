"""The README's first command: the demo runs every stage end to end and leaves each output behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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
    scored = pd.read_parquet(out / "scored" / "clips.parquet")
    assert len(scored) == len(clips) and scored["motion"].notna().all() and scored["camera_motion"].notna().all()
    shipped = pd.read_parquet(out / "shards" / "index.parquet")
    assert len(shipped) >= 1 and list((out / "shards").glob("*.tar"))
    assert (shipped["black_frac"] < 0.5).all() and (shipped["text_area"] < 0.02).all()  # the demo's --where
    top = scored.sort_values("motion", ascending=False).head(-(-len(scored) * 4 // 5))  # --keep-top motion:0.8
    assert set(shipped["clip_id"]) <= set(top["clip_id"])
    card = (out / "shards" / "DATA_CARD.md").read_text()
    assert card.startswith("---") and "black_frac < 0.5" in card and "top 80% by motion" in card
    assert (out / "review" / "index.html").exists()
    assert (out / "sample.mp4").stat().st_size > 0
    assert "sample video" in r.stdout and "--prompt 'a blue circle moving right'" in r.stdout


def test_a_failed_step_or_ctrl_c_ends_the_demo_with_one_line(tmp_path):
    exe = Path(sys.executable).with_name("shotcap-demo")
    out = tmp_path / "demo"
    out.mkdir()
    (out / "split").write_text("a file where the split wants its folder")
    r = subprocess.run([str(exe), "-o", str(out), "--videos", "1", "--seconds", "2"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == ("shotcap-demo: 'split into shots' failed (exit status 2); "
                                                 "its message is above")
    (out / "split").unlink()
    # Ctrl-C at a terminal reaches the demo and its running step together (one process group)
    proc = subprocess.Popen([str(exe), "-o", str(out), "--videos", "1", "--seconds", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lock = out / "split" / ".shotcap" / "lock"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (lock.exists() and lock.stat().st_size):
        time.sleep(0.02)  # the split has started (its lock names it), past Python's own start-up
    os.killpg(proc.pid, signal.SIGINT)
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("shotcap-demo: interrupted")
    assert "== done" not in rest
