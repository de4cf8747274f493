"""Test data for build-shards: synthetic sources with known shots, an exact copy, a near-duplicate, scores and
caption flags, and a manifest over them (one row per clip, as every stage writes it).

    original.mp4   `shots` shots of `frames` frames, 96x64, 25 fps
    copy.mp4       original.mp4 with bytes appended: other file hash (other clip ids), identical frames
    resized.mp4    original.mp4 at 192x128, re-encoded; its ranges trimmed 3 frames each side: near-duplicates
    other.mp4      2 shots of different content, 128x64 at 24 fps
The score columns are the scorer's (score-clips registers them); until it does, the `scores` fixture does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from index import synth
from index.files import file_sha256
from index.manifest import read_manifest, write_manifest
from index.record import STAGE_COLUMNS, Clip
from index.synth import ShotSpec
from index.video import probe, write_video

SCORES = {"aesthetic": "float", "motion": "float", "text_area": "float", "camera_motion": "string",
          "text_static": "bool"}
CAMERA = ["static", "pan_left", "pan_right", "zoom_in", "shaky"]


@pytest.fixture
def scores(monkeypatch):
    """Register the scorer's columns where score-clips has not yet (a no-op once it has)."""
    for col, kind in SCORES.items():
        if col not in STAGE_COLUMNS:
            monkeypatch.setitem(STAGE_COLUMNS, col, kind)


def manifest_rows(path, ranges, captions) -> list[dict]:
    info, sha = probe(path), file_sha256(path)
    rows = []
    for (a, b), caption in zip(ranges, captions):
        row = Clip.from_range(str(path), sha, a, b, a / info.fps, b / info.fps, info.fps, info.width,
                              info.height).to_dict()
        rows.append({**row, "caption": caption, "caption_flags": ""})
    return rows


def caption_for(seed: int) -> str:
    words = ["red", "square", "moves", "across", "a", "green", "striped", "background", "slowly", "fast", "blue",
             "circle", "bounces", "over", "sunset", "texture"]
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(words, size=int(rng.integers(6, 12))))


def make_shards_dataset(folder, shots: int = 4, frames: int = 20, with_scores: bool = False) -> dict:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr, truth = synth.render([ShotSpec(frames, seed=100 + s) for s in range(shots)], size=(96, 64))
    write_video(folder / "original.mp4", arr, 25.0)
    shutil.copy(folder / "original.mp4", folder / "copy.mp4")
    with open(folder / "copy.mp4", "ab") as f:
        f.write(b"\0" * 64)  # another file hash, the same frames
    write_video(folder / "resized.mp4", np.repeat(np.repeat(arr, 2, axis=1), 2, axis=2), 25.0)
    other, other_truth = synth.render([ShotSpec(frames + 5, seed=300 + s) for s in range(2)], size=(128, 64))
    write_video(folder / "other.mp4", other, 24.0)
    caps = [caption_for(s) for s in range(shots)]
    rows = (manifest_rows(folder / "original.mp4", truth.shots, caps)
            + manifest_rows(folder / "copy.mp4", truth.shots, caps)
            + manifest_rows(folder / "resized.mp4", [(a + 3, b - 3) for a, b in truth.shots], caps)
            + manifest_rows(folder / "other.mp4", other_truth.shots, ["a yellow shape on a blue texture",
                                                                       "a white circle over a red sunset"]))
    df = pd.DataFrame(rows)
    if with_scores:
        rng = np.random.default_rng(7)
        df["aesthetic"] = np.round(rng.uniform(3, 7, len(df)), 3)
        df["motion"] = np.round(rng.uniform(0, 2, len(df)), 3)
        df["text_area"] = np.round(rng.uniform(0, 0.05, len(df)), 4)
        df["camera_motion"] = [CAMERA[k % len(CAMERA)] for k in range(len(df))]
        df["text_static"] = [k % 3 == 0 for k in range(len(df))]
    write_manifest(df, folder / "manifest.parquet")
    return {"folder": folder, "manifest": folder / "manifest.parquet", "shots": shots, "ranges": truth.shots,
            "captions": caps, "frames": arr, "rows": len(df)}


def tar_digest(folder) -> dict:
    """Shard -> its bytes: cutting and encoding are deterministic (see index.video), so equal inputs give equal tars."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.tar"))}


def assert_same_tars(a: dict, b: dict) -> None:
    assert list(a) == list(b) and a
    for name in a:
        assert a[name] == b[name], name


def test_the_dataset_has_one_row_per_clip_and_known_duplicates(tmp_path):
    data = make_shards_dataset(tmp_path, shots=2, frames=12)
    df = read_manifest(data["manifest"])
    assert len(df) == df["clip_id"].nunique() == 2 * 3 + 2
    assert df["video_sha256"].nunique() == 4  # the copy has its own hash
    assert (df["num_frames"] == df["end_frame"] - df["start_frame"]).all()
