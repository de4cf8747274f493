"""Bad input never stops a run: every file of the corpus splits correctly or lands in failed.jsonl."""

import json

import pandas as pd
import pytest

import hostile
from index.manifest import read_manifest
from splitter.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    cases = hostile.make_corpus(raw / "nested" / "deeper")  # the walk is recursive
    (raw / "notes.txt").write_text("not a video name: ignored")
    out = tmp_path_factory.mktemp("out")
    code = main([str(raw), "-o", str(out), "--no-progress"])
    return raw, cases, out, code


@pytest.mark.slow  # the fixture splits the whole corpus with TransNetV2
def test_exit_code_is_zero_when_every_failure_is_recorded(run):
    assert run[3] == 0


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _copies(out) -> dict:
    """{copy's name: name of the file split for that content}"""
    lines = (out / "copies.jsonl").read_text(encoding="utf-8").splitlines()
    return {_name(c["path"]): _name(c["copy_of"]) for c in map(json.loads, lines)}


def test_each_file_splits_or_fails_with_one_line_reason(run):
    raw, cases, out, _ = run
    df = read_manifest(out / "clips.parquet")
    lines = (out / "failed.jsonl").read_text(encoding="utf-8").splitlines()
    failed = {_name(json.loads(line)["path"]): json.loads(line) for line in lines}
    split = {_name(p) for p in df["video_path"]}
    copies = _copies(out)
    assert df["clip_id"].is_unique and set(copies.values()) <= split
    for name, case in cases.items():
        if case.expect == "fail":
            assert name in failed and name not in split, name
            assert case.reason in failed[name]["reason"] and failed[name]["stage"] == "split"
        else:  # split, or an exact copy of a file that was split (recorded once, not decoded again)
            assert (name in split) != (name in copies) and name not in failed, (name, failed.get(name))
    assert len(failed) + len(split) + len(copies) == len(cases)


def test_awkward_files_split_right(run):
    raw, cases, out, _ = run
    df = read_manifest(out / "clips.parquet")
    names = df["video_path"].map(_name)
    for copy, source in _copies(out).items():  # a copy has its source's clips
        df = pd.concat([df, df[names == source].assign(video_path=copy)])
        names = df["video_path"].map(_name)
    df = df.set_index(names)
    # every good file has a hard cut at frame 62 (2.48 s): clips on both sides with one frame trimmed
    for name in ("name with spaces.mp4", "vidéo_日本語_ü.mp4", "a;b $(x).mp4", "anamorphic_2to1.mp4",
                 "rotated_90.mp4", "first_pts_3s.mkv"):
        rows = df.loc[[name]]
        assert list(zip(rows.start_frame, rows.end_frame)) == [(1, 61), (63, 124)], name
    assert df.loc[["first_pts_3s.mkv"]].start_sec.min() == pytest.approx(0.04)  # from the first frame
    assert tuple(df.loc[["rotated_90.mp4"]].iloc[0][["width", "height"]]) == (96, 160)
    assert tuple(df.loc[["anamorphic_2to1.mp4"]].iloc[0][["width", "height"]]) == (320, 96)
    vfr = df.loc[["vfr.mkv"]]  # frames 0..62 every 40 ms, then 21 frames every 100 ms from 2.52 s
    assert list(vfr.start_frame) == [1, 63] and vfr.iloc[1].start_sec == pytest.approx(2.52)
    assert vfr.iloc[1].end_sec == pytest.approx(4.52)  # the PTS of frame 83, the trimmed last frame
    assert vfr.iloc[0].fps == pytest.approx(83 / 4.52, rel=1e-4)  # PTS-based average, not the nominal 25
