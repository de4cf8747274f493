"""score-clips on the engine: bad input is recorded and the run goes on; --workers 1, --workers 2 and
--engine ray write the same files; a run killed with SIGKILL resumes to the uninterrupted result."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import hostile
from index import synth
from index.files import file_sha256
from index.manifest import read_failed, read_manifest, write_manifest
from index.record import Clip
from index.video import probe
from scorer.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCORERS = "motion,camera_motion,sharpness,brightness,text_area,bpp"


def windows(video: Path, length: int = 25) -> list[dict]:
    """Consecutive clips of `length` frames over a constant-rate video."""
    info, sha = probe(video), file_sha256(video)
    n = int(round(info.duration * info.fps))
    return [Clip.from_range(str(video), sha, a, a + length, a / info.fps, (a + length) / info.fps, info.fps,
                            info.width, info.height).to_dict() for a in range(0, n - length + 1, length)]


def make_sources(folder: Path, count: int = 4) -> list[dict]:
    rows = []
    for i in range(count):
        shots, trans = synth.sample_layout(200 + i, seconds=3.0)
        video = folder / f"v{i}.mp4"
        synth.make_video(video, shots, trans, size=(160, 96))
        rows += windows(video)[:2]
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Four good sources, plus: a clip past the end of a good video, a source that is not a video (its sha
    matches: the decoder is what refuses it), a source deleted since it was split, and a row out of range."""
    folder = tmp_path_factory.mktemp("corpus")
    rows = make_sources(folder)
    past = dict(rows[0], start_frame=500, end_frame=525, start_sec=20.0, end_sec=21.0)
    past["clip_id"] = "past-the-end"
    broken = hostile.text_as_video(folder / "broken.mp4")
    fake = dict(rows[0], video_path=str(broken), video_sha256=file_sha256(broken), clip_id="broken-0")
    gone = folder / "gone.mp4"
    shutil.copy(rows[0]["video_path"], gone)
    lost = dict(rows[0], video_path=str(gone), clip_id="gone-0")
    gone.unlink()
    bad = dict(rows[1], clip_id="bad-row", end_frame=rows[1]["start_frame"] - 1)
    write_manifest(pd.DataFrame(rows + [past, fake, lost, bad]), folder / "clips.parquet")
    return folder


def score(manifest: Path, out: Path, *extra: str) -> int:
    return main([str(manifest), "-o", str(out), "--quiet", "--scorers", SCORERS, *extra])


@pytest.fixture(scope="module")
def reference(corpus) -> Path:
    out = corpus / "ref"
    assert score(corpus / "clips.parquet", out) == 0
    return out


def test_bad_input_is_each_clips_failure_and_the_run_goes_on(corpus, reference):
    df = read_manifest(reference / "clips.parquet")
    good = read_manifest(corpus / "clips.parquet")
    good = good[good["video_path"].str.contains(r"/v\d\.mp4$") & ~good["clip_id"].isin(["past-the-end", "bad-row"])]
    assert sorted(df["clip_id"]) == sorted(good["clip_id"])  # every good clip, the past-the-end one's too
    assert df["motion"].notna().all()
    assert (df["text_area"] < 0.01).all()  # synthetic textures hold no text (the detector once read them as text)
    reasons = {r["reason"] for r in read_failed(reference)}
    assert len(reasons) == 4
    assert any(r.startswith("clip past-the-end: frames 500-525 lie beyond") for r in reasons)
    assert any("not a readable video" in r for r in reasons)  # the decoder's one line
    assert any("video missing" in r for r in reasons)
    assert any("bad-row" in r and "end_frame" in r for r in reasons)
    assert all("\n" not in r for r in reasons)


def test_a_rerun_changes_nothing(corpus, reference, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(reference, out)
    before = (out / "clips.parquet").read_bytes(), (out / "failed.jsonl").read_bytes()
    parts = sorted(p.name for p in (out / ".parts" / "score").iterdir())
    assert score(corpus / "clips.parquet", out) == 0
    assert ((out / "clips.parquet").read_bytes(), (out / "failed.jsonl").read_bytes()) == before
    assert sorted(p.name for p in (out / ".parts" / "score").iterdir()) == parts


def test_retry_failed_tries_the_failures_again_and_lists_each_once(corpus, reference, tmp_path):
    out = tmp_path / "retry"
    shutil.copytree(reference, out)
    parts = out / ".parts" / "score"
    batches_before = sorted(p.name for p in parts.glob("*.parquet"))
    assert score(corpus / "clips.parquet", out, "--retry-failed") == 0
    assert read_failed(out) == read_failed(reference)
    assert len(list(parts.glob("*.parquet"))) > len(batches_before)  # they were tried again: a new batch
    pd.testing.assert_frame_equal(read_manifest(out / "clips.parquet"), read_manifest(reference / "clips.parquet"))


def test_other_options_in_the_same_folder_are_refused(corpus, reference, tmp_path, capsys):
    out = tmp_path / "other"
    shutil.copytree(reference, out)
    assert score(corpus / "clips.parquet", out, "--sample-fps", "4") == 2
    assert "other options (sample_fps)" in capsys.readouterr().err


def test_two_workers_write_the_same_files(corpus, reference, tmp_path):
    out = tmp_path / "two"
    assert score(corpus / "clips.parquet", out, "--workers", "2") == 0
    pd.testing.assert_frame_equal(read_manifest(out / "clips.parquet"), read_manifest(reference / "clips.parquet"))
    assert read_failed(out) == read_failed(reference)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "scorer.cli", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_ray_writes_the_same_files(corpus, reference, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    run = subprocess.run(_cli(str(corpus / "clips.parquet"), "-o", str(out), "--quiet", "--scorers", SCORERS,
                              "--engine", "ray", "--workers", "2"), env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    pd.testing.assert_frame_equal(read_manifest(out / "clips.parquet"), read_manifest(reference / "clips.parquet"))
    assert read_failed(out) == read_failed(reference)


@pytest.mark.slow
def test_kill_then_rerun_gives_the_uninterrupted_result(corpus, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = _cli(str(corpus / "clips.parquet"), "-o", str(out), "--quiet", "--scorers", SCORERS)
    env = {**_env(), "SHOTCAP_FLUSH_SECONDS": "0"}  # a batch per finished unit, so the kill lands between them
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / ".parts" / "score"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(parts.glob("*.parquet")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "clips.parquet").exists()
    assert 1 <= len(list(parts.glob("*.parquet"))) < 4
    assert subprocess.run(cmd, env=_env(), capture_output=True).returncode == 0
    got = read_manifest(out / "clips.parquet")
    assert got["clip_id"].is_unique
    pd.testing.assert_frame_equal(got, read_manifest(reference / "clips.parquet"))
    assert read_failed(out) == read_failed(reference)
