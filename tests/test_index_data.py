"""Test data for the index tests: synthetic sources with known shots, copies, and manifests built from them.

The manifests are made directly from the ground truth with `Clip.from_range` (no splitter involved).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from index import synth
from index.manifest import read_manifest, write_manifest
from index.files import file_sha256
from index.record import Clip
from index.synth import ShotSpec
from index.video import probe, write_video

WORDS = ["red", "square", "moves", "across", "a", "green", "striped", "background", "slowly", "fast", "blue",
         "circle", "bounces", "over", "sunset", "texture"]


def manifest_rows(path, ranges, captions=None) -> list[dict]:
    info = probe(path)
    sha = file_sha256(path)
    rows = []
    for k, (a, b) in enumerate(ranges):
        row = Clip.from_range(str(path), sha, a, b, a / info.fps, b / info.fps, info.fps, info.width,
                              info.height).to_dict()
        if captions is not None:
            row["caption"] = captions[k]
        rows.append(row)
    return rows


def caption_for(seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, size=int(rng.integers(6, 12))))


def remux(src, dst) -> None:
    """The same packets in another container: identical decoded frames, other bytes (another content hash)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        target = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:  # the demuxer's final flush packet
                continue
            packet.stream = target
            out.mux(packet)


def make_dataset(folder, shots: int = 5, frames: int = 30, size=(96, 64)) -> dict:
    """original.mp4 (shots of `frames` frames), a copy with the same frames in another container, a 2x
    re-encoded resize, and `manifest.parquet` over all three (trimmed ranges on the resized copy).
    (A bit-identical copy never reaches a manifest: split-videos records it once, in copies.jsonl.)"""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames_arr, truth = synth.render([ShotSpec(frames, seed=100 + s) for s in range(shots)], size=size)
    write_video(folder / "original.mp4", frames_arr, 25.0)
    remux(folder / "original.mp4", folder / "copy of original (1).mkv")
    big = np.repeat(np.repeat(frames_arr, 2, axis=1), 2, axis=2)
    write_video(folder / "resized.mp4", big, 25.0)
    ranges = truth.shots
    trimmed = [(a + 3, b - 3) for a, b in ranges]
    caps = [caption_for(s) for s in range(shots)]
    rows = (manifest_rows(folder / "original.mp4", ranges, caps)
            + manifest_rows(folder / "copy of original (1).mkv", ranges, caps)
            + manifest_rows(folder / "resized.mp4", trimmed, caps))
    df = pd.DataFrame(rows)
    write_manifest(df, folder / "manifest.parquet")
    return {"folder": folder, "manifest": folder / "manifest.parquet", "shots": shots, "ranges": ranges,
            "captions": caps, "frames": frames_arr}


def test_make_dataset_manifest_is_valid(tmp_path):
    data = make_dataset(tmp_path, shots=2, frames=12)
    df = read_manifest(data["manifest"])
    assert len(df) == 6
    assert df["clip_id"].is_unique  # the remuxed copy has other bytes, so clip ids of its own
    assert (df["num_frames"] == df["end_frame"] - df["start_frame"]).all()
