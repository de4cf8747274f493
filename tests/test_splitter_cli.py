"""split-videos end to end: manifest, re-run skips, option changes refused, --cut, workers."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from index.manifest import read_failed, read_manifest
from index.video import iter_frames, read_frames
from splitter.cli import main
from splitter.pipeline import STAGE, split_videos


@pytest.fixture(scope="module")
def first_run(sample_videos, tmp_path_factory):
    raw, truths = sample_videos
    out = tmp_path_factory.mktemp("split")
    assert main([str(raw), "-o", str(out), "--no-progress"]) == 0
    return raw, truths, out


def test_manifest_rows_are_pure_shot_content(first_run):
    raw, truths, out = first_run
    df = read_manifest(out / "clips.parquet")
    assert len(df) > 0 and read_failed(out) == []
    assert df["clip_id"].is_unique
    for _, row in df.iterrows():
        truth = truths[row.video_path.rsplit("/", 1)[-1]]
        inside = [a <= row.start_frame and row.end_frame <= b for a, b in truth.shots]
        assert any(inside), row  # no clip crosses a cut or holds transition frames
        assert row.end_sec - row.start_sec >= 2.0 - 1e-6 and row.num_frames == row.end_frame - row.start_frame
        assert (row.width, row.height, row.fps) == (160, 96, 25.0)


def test_rerun_skips_and_changes_nothing(first_run, capsys):
    raw, _, out = first_run
    before = (out / "clips.parquet").read_bytes()
    parts = sorted(p.stat().st_mtime_ns for p in (out / ".parts" / STAGE).glob("*.parquet"))
    capsys.readouterr()
    assert main([str(raw), "-o", str(out), "--no-progress"]) == 0
    assert "split now 0, already done 2" in capsys.readouterr().err
    assert sorted(p.stat().st_mtime_ns for p in (out / ".parts" / STAGE).glob("*.parquet")) == parts
    assert pd.read_parquet(out / "clips.parquet").equals(pd.read_parquet(pd.io.common.BytesIO(before)))


def test_other_options_on_the_same_output_are_refused(first_run, capsys):
    raw, _, out = first_run
    assert main([str(raw), "-o", str(out), "--min-sec", "3", "--no-progress"]) == 2
    assert "other options (min_sec)" in capsys.readouterr().err


def test_usage_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "-o", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "-o", str(tmp_path / "o2"), "--no-progress"]) == 1
    assert main([str(tmp_path / "empty"), "-o", str(tmp_path / "o3"), "--detector-options", "[1]"]) == 2


def test_cut_writes_frame_accurate_clips(sample_videos, tmp_path):
    raw, _ = sample_videos
    one = tmp_path / "raw"
    one.mkdir()
    shutil.copy(raw / "sample_00.mp4", one / "sample_00.mp4")
    manifest, failures = split_videos(one, tmp_path / "out", detector="adaptive", cut=True, progress=False)
    df = read_manifest(manifest)
    assert failures == [] and len(df) > 0 and df["clip_path"].notna().all()
    for _, row in df.iterrows():
        frames = np.stack([f.image for f in iter_frames(row.clip_path)])
        assert len(frames) == row.num_frames
        src = read_frames(row.video_path, [row.start_frame, row.end_frame - 1])
        # re-encoded, so not bit-exact: the first and last frames are those of the source range
        assert np.abs(frames[0].astype(int) - src[0]).mean() < 6
        assert np.abs(frames[-1].astype(int) - src[1]).mean() < 6
        assert np.abs(frames[-1].astype(int) - src[0]).mean() > np.abs(frames[0].astype(int) - src[0]).mean()


@pytest.mark.slow
def test_two_workers_give_the_same_manifest(first_run, tmp_path):
    raw, _, out = first_run
    assert main([str(raw), "-o", str(tmp_path / "w2"), "--workers", "2", "--no-progress"]) == 0
    a = read_manifest(out / "clips.parquet")
    b = read_manifest(tmp_path / "w2" / "clips.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert json.loads((tmp_path / "w2" / ".parts" / STAGE / "config.json").read_text())["detector"] == "transnetv2"


def test_manifest_follows_raw_dir_when_a_file_changes_or_goes(sample_videos, tmp_path, capsys):
    src, _ = sample_videos
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    good = sorted(src.glob("*.mp4"))
    (raw / "a.mp4").write_bytes(good[0].read_bytes()[:4000])  # a broken download
    shutil.copy(good[1], raw / "b.mp4")
    assert main([str(raw), "-o", str(out), "--no-progress"]) == 0
    assert [f["path"] for f in read_failed(out)] == [str(raw / "a.mp4")]
    b_rows = len(read_manifest(out / "clips.parquet"))

    shutil.copy(good[0], raw / "a.mp4")  # downloaded again, whole
    assert main([str(raw), "-o", str(out), "--no-progress"]) == 0
    df = read_manifest(out / "clips.parquet")
    assert read_failed(out) == [] and set(df.video_path) == {str(raw / "a.mp4"), str(raw / "b.mp4")}

    shutil.copy(good[1], raw / "a.mp4")  # replaced by other content: only the new content's clips remain
    (raw / "b.mp4").unlink()
    assert main([str(raw), "-o", str(out), "--no-progress"]) == 0
    df = read_manifest(out / "clips.parquet")
    assert set(df.video_path) == {str(raw / "a.mp4")} and len(df) == b_rows and df["clip_id"].is_unique
    capsys.readouterr()
    shutil.copy(good[1], raw / "b.mp4")  # back again, an exact copy of a.mp4: recorded, not split nor listed twice
    assert main([str(raw), "-o", str(out), "--no-progress"]) == 0
    assert "split now 0, already done 1, exact copies 1" in capsys.readouterr().err
    assert read_manifest(out / "clips.parquet")["clip_id"].is_unique
    assert [json.loads(x) for x in (out / "copies.jsonl").read_text().splitlines()] == [
        {"path": str(raw / "b.mp4"), "copy_of": str(raw / "a.mp4"), "video_sha256": df["video_sha256"].iloc[0]}]


def test_retry_failed_redoes_a_video_that_failed_for_a_passing_reason(sample_videos, tmp_path, capsys):
    from index.manifest import PartStore

    src, _ = sample_videos
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    shutil.copy(sorted(src.glob("*.mp4"))[0], raw / "a.mp4")
    args = [str(raw), "-o", str(out), "--no-progress", "--detector", "content"]
    assert main(args) == 0
    first = read_manifest(out / "clips.parquet")
    from index.files import file_sha256
    from splitter.pipeline import unit_key

    for part in (out / ".parts" / STAGE).glob("*.parquet"):  # as if its worker had been killed by the OOM killer
        part.unlink()
    with PartStore(out, STAGE) as store:
        store.fail(unit_key(file_sha256(raw / "a.mp4")), str(raw / "a.mp4"), "worker process died")
    assert main(args) == 1  # skipped: a re-run does not try failures again by itself
    assert [f["reason"] for f in read_failed(out)] == ["worker process died"]
    assert main([*args, "--retry-failed"]) == 0
    assert read_failed(out) == [] and read_manifest(out / "clips.parquet").equals(first)


def test_cut_clips_of_a_vfr_file_last_as_long_as_their_range(tmp_path):
    import hostile
    from index.video import probe

    raw = tmp_path / "raw"
    raw.mkdir()
    hostile.make_corpus(tmp_path / "corpus")
    shutil.copy(tmp_path / "corpus" / "vfr.mkv", raw / "vfr.mkv")  # 25 fps, then 10 fps
    manifest, failures = split_videos(raw, tmp_path / "out", detector="content", cut=True, progress=False,
                                      min_sec=0.5, max_sec=1.5, trim_frames=0)
    df = read_manifest(manifest)
    assert failures == [] and len(df) > 2
    for row in df.itertuples():
        info = probe(row.clip_path)
        assert info.duration == pytest.approx(row.end_sec - row.start_sec, abs=0.02), row


def test_bad_detector_options_are_a_usage_error_and_leave_nothing(sample_videos, tmp_path, capsys):
    raw, _ = sample_videos
    args = [str(raw), "-o", str(tmp_path / "out"), "--detector", "content", "--no-progress"]
    assert main([*args, "--detector-options", '{"treshold": 30}']) == 2
    assert "treshold" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main([*args, "--detector-options", '{"threshold": 30}']) == 0  # the corrected run is not refused
