"""The data contract under abuse: hashes cached by file identity, one run per output folder, only our own temp
files deleted, non-regular files and undecodable names refused as bad input, hand-edited rows range-checked,
every manifest with a unique clip_id."""

from __future__ import annotations

import math
import os
import shutil

import pandas as pd
import pytest

from index.engine import BadInput
from index.files import HashCache, LockError, OutputLock, atomic_write_text, file_sha256, remove_own_temps, temp_name
from index.manifest import check_rows, read_failed, read_manifest, write_manifest
from index.record import Clip


def test_hash_cache_reads_a_file_once_until_it_changes(tmp_path):
    f = tmp_path / "a.mp4"
    f.write_bytes(b"x" * 1000)
    with HashCache(tmp_path / "out") as cache:
        sha = cache.sha256(f)
        assert sha == file_sha256(f) and cache.hashed == 1
    with HashCache(tmp_path / "out") as again:  # a re-run: a stat, no read
        assert again.sha256(f) == sha and (again.hashed, again.cached) == (0, 1)
    with HashCache(tmp_path / "out", rehash=True) as full:  # --rehash reads it all again
        assert full.sha256(f) == sha and full.hashed == 1
    f.write_bytes(b"y" * 1000)  # same size, new content and mtime
    with HashCache(tmp_path / "out") as changed:
        assert changed.sha256(f) == file_sha256(f) != sha and changed.hashed == 1
    with HashCache(tmp_path / "other", also=[tmp_path / "out"]) as seeded:  # the input stage's cache is read too
        seeded.sha256(f)
        assert seeded.hashed == 0
    with open(tmp_path / "out" / ".shotcap" / "hashes.jsonl", "a") as torn:  # a kill mid-line
        torn.write('{"path": "/x", "si')
    with HashCache(tmp_path / "out") as after_kill:
        assert after_kill.sha256(f) == file_sha256(f) and after_kill.hashed == 0


def test_many_files_are_hashed_on_several_threads_in_order(tmp_path, monkeypatch):
    import threading
    import time

    import index.files as files

    paths = []
    for i in range(24):
        paths.append(tmp_path / f"v{i:02d}.mp4")
        paths[-1].write_bytes(bytes([i]) * 5000)
    with HashCache(tmp_path / "out") as cache:
        cache.sha256(paths[3])  # one already known
    real, busy, most, lock = files.file_sha256, [0], [0], threading.Lock()

    def slow(path):  # a read that waits, as on a bucket; counts the reads in flight
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.02)
        try:
            return real(path)
        finally:
            with lock:
                busy[0] -= 1

    monkeypatch.setattr(files, "file_sha256", slow)
    items = [(p, None) for p in paths] + [(tmp_path / "gone.mp4", None)]
    with HashCache(tmp_path / "out") as cache:
        got = list(cache.sha256_many(items, threads=4))
    assert [g[0] for g in got] == [p for p, _ in items]  # the listing's order
    assert [g[2] for g in got[:-1]] == [real(p) for p in paths]
    assert "No such file" in str(got[-1][2]) and isinstance(got[-1][2], files.BadInput)
    assert (cache.hashed, cache.cached) == (23, 1) and 1 < most[0] <= 4  # several reads at once, at most 4
    with HashCache(tmp_path / "out") as again:  # all remembered
        assert [g[2] for g in again.sha256_many(items[:-1])] == [g[2] for g in got[:-1]] and again.hashed == 0


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "stream.mp4"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero", tmp_path):
        with pytest.raises(BadInput, match="not a regular file"):
            file_sha256(path)  # returns at once instead of blocking on a writer or reading forever
        with pytest.raises(BadInput, match="not a regular file"):
            HashCache(tmp_path / "out").sha256(path)
    with pytest.raises(BadInput, match="cannot read file"):
        HashCache(tmp_path / "out").sha256(tmp_path / "gone.mp4")


def test_a_second_run_on_a_folder_is_refused_naming_the_first(tmp_path):
    with OutputLock(tmp_path, "split-videos raw -o out"):
        with pytest.raises(LockError, match=r"in use by another run \(split-videos raw -o out, pid \d+"):
            with OutputLock(tmp_path, "split-videos raw -o out"):
                pass
    with OutputLock(tmp_path, "again"):  # released at the end of the run
        pass


def test_a_locked_output_folder_is_one_line_and_exit_code_2(sample_videos, tmp_path, capsys):
    from splitter.cli import main

    raw, _ = sample_videos
    with OutputLock(tmp_path / "out", "split-videos (the first run)"):
        assert main([str(raw), "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in use by another run (split-videos (the first run), pid" in err[0]


def test_cleanup_deletes_only_our_own_temp_files(tmp_path):
    ours = temp_name(tmp_path / "clips.parquet")
    ours.write_bytes(b"half written")
    theirs = [tmp_path / ".notes.tmp", tmp_path / ".draft.mp4.tmp", tmp_path / "my_backup.tar"]
    for p in theirs:
        p.write_bytes(b"the user's")
    (tmp_path / "sub").mkdir()
    nested = temp_name(tmp_path / "sub" / "x.parquet")
    nested.write_bytes(b"in a folder not named")
    assert remove_own_temps(tmp_path) == 1
    assert not ours.exists() and all(p.exists() for p in theirs) and nested.exists()
    atomic_write_text(tmp_path / "done.txt", "ok")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".draft.mp4.tmp", ".notes.tmp"]


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from captioner.testing import build_tiny_model

    return build_tiny_model("qwen2.5-vl", tmp_path_factory.mktemp("tiny_vlm"))


@pytest.mark.parametrize("command", ["split-videos", "caption-videos"])
def test_a_rerun_removes_what_a_killed_run_was_writing(command, sample_videos, tiny_vlm, tmp_path):
    """A kill leaves temp files of ours: the manifest's folder being filled, failed.jsonl, a part being joined. The
    next run in that folder removes them (and only them) whatever stage it is; before, split and caption left them."""
    from captioner.cli import main as caption
    from splitter.cli import main as split

    raw, _ = sample_videos
    out = tmp_path / ("split" if command == "split-videos" else "cap")
    if command == "caption-videos":
        assert split([str(raw), "-o", str(tmp_path / "split"), "--no-progress"]) == 0

    def run():
        if command == "split-videos":
            return split([str(raw), "-o", str(out), "--no-progress"])
        return caption([str(tmp_path / "split" / "clips.parquet"), "--model", str(tiny_vlm), "-o", str(out),
                        "--num-frames", "4", "--max-new-tokens", "4", "--quiet"])

    assert run() == 0
    (parts,) = (out / ".parts").iterdir()
    stale = [temp_name(out / "clips.parquet"), temp_name(out / "failed.jsonl"), temp_name(parts / "b.parquet")]
    stale[0].mkdir()
    (stale[0] / "part-00000.parquet").write_bytes(b"half")
    stale[1].write_bytes(b"half")
    stale[2].write_bytes(b"half")
    (out / ".my_notes.tmp").write_text("the user's")
    assert run() == 0
    assert [p for p in stale if p.exists()] == []
    assert (out / ".my_notes.tmp").read_text() == "the user's"
    assert sorted(p.name for p in out.rglob("*.tmp")) == [".my_notes.tmp"]


def _rows(n=3):
    return pd.DataFrame([Clip.from_range("raw/a.mp4", "ab" * 32, 25 * i, 25 * (i + 1), i, i + 1, 25.0, 640, 360)
                         .to_dict() for i in range(n)])


@pytest.mark.parametrize("column,value,why", [
    ("start_frame", -50, "start_frame is -50, must be >= 0"),
    ("fps", math.nan, "fps is nan, must be a positive number"),
    ("fps", 0.0, "fps is 0.0, must be a positive number"),
    ("end_frame", 25, "end_frame is 25, must be > start_frame (25)"),
    ("num_frames", 7, "num_frames is 7, must be end_frame - start_frame (25)"),
    ("width", 0, "width is 0, must be a positive number"),
    ("end_sec", 0.5, "end_sec is 0.5, must be a number > start_sec (1.0)"),
])
def test_a_hand_edited_row_out_of_range_is_that_rows_failure(column, value, why):
    df = _rows()
    df.loc[1, column] = value
    good, fails = check_rows(df, "m.parquet", "caption")
    assert good["clip_id"].tolist() == [df["clip_id"][0], df["clip_id"][2]]
    assert fails == [{"path": "raw/a.mp4", "stage": "caption",
                      "reason": f"m.parquet row 1 (clip {df['clip_id'][1]}): {why}"}]


def test_a_repeated_clip_id_is_refused_on_read_and_on_write(tmp_path):
    df = pd.concat([_rows(2), _rows(2).iloc[:1]], ignore_index=True)
    good, fails = check_rows(df, "m.parquet", "index")
    assert len(good) == 2 and "row 2" in fails[0]["reason"] and "repeats an earlier row" in fails[0]["reason"]
    with pytest.raises(RuntimeError, match="on more than one row"):
        write_manifest(df, tmp_path / "clips.parquet")  # a stage that made such a frame has a bug


def test_split_records_fifos_and_undecodable_names_and_goes_on(sample_videos, tmp_path):
    from splitter.pipeline import split_videos

    src, _ = sample_videos
    raw = tmp_path / "raw"
    raw.mkdir()
    good = sorted(src.glob("*.mp4"))[0]
    shutil.copy(good, raw / "good.mp4")
    os.mkfifo(raw / "pipe.mp4")  # reading it would block forever
    bad_name = os.fsencode(raw) + b"/caf\xe9 latin-1.mp4"  # not valid UTF-8
    shutil.copy(good, bad_name)
    os.utime(bad_name, (1, 1))
    summary: dict = {}
    df = read_manifest(split_videos(raw, tmp_path / "out", detector="content", progress=False, summary=summary)[0])
    assert set(df["video_path"]) == {str(raw / "good.mp4")} and summary["videos"] == 3
    reasons = {f["path"].rsplit("/", 1)[-1]: f["reason"] for f in read_failed(tmp_path / "out")}
    assert reasons == {"pipe.mp4": "not a regular file (a pipe, device or folder)",
                       "caf\\xe9 latin-1.mp4": "file name is not valid UTF-8; rename the file"}
    summary.clear()
    again = read_manifest(split_videos(raw, tmp_path / "out", detector="content", progress=False, summary=summary)[0])
    assert summary["hashed"] == 0 and again.equals(df)  # a re-run reads no file: their hashes are cached


def test_index_clips_does_not_hang_on_a_row_pointing_at_a_device(sample_videos, tmp_path):
    from index.dedup.cli import build_index
    from splitter.pipeline import split_videos

    df = read_manifest(split_videos(sample_videos[0], tmp_path / "split", detector="content", progress=False)[0])
    bad = df.iloc[:1].assign(video_path="/dev/zero", clip_id="device-clip")
    write_manifest(pd.concat([df, bad], ignore_index=True), tmp_path / "m.parquet")
    meta = build_index(tmp_path / "m.parquet", tmp_path / "idx")
    assert meta["clips"] == len(df)
    assert [f["path"] for f in read_failed(tmp_path / "idx")] == ["/dev/zero"]
    assert "not a regular file" in read_failed(tmp_path / "idx")[0]["reason"]
    assert read_manifest(tmp_path / "idx" / "clips.parquet")["clip_id"].is_unique


def test_a_pyav_error_is_a_bug_with_its_traceback_not_a_disk_error(capsys):
    import av

    from index.manifest import run_cli

    def misused(argv):  # a decoder given a size it cannot make (PyAV's errors are OSErrors too)
        raise av.error.OSError(95, "Operation not supported")

    with pytest.raises(av.error.OSError):
        run_cli("x", misused, [])

    def full(argv):
        raise OSError(28, "No space left on device", "out/clips.parquet")

    assert run_cli("x", full, []) == 2
    assert capsys.readouterr().err == "x: error: cannot read or write a file (No space left on device): " \
                                      "out/clips.parquet\n"


def test_a_folder_belongs_to_the_first_command_that_wrote_it(tmp_path):
    (tmp_path / "failed.jsonl").write_text('{"path": "a.mp4", "stage": "split", "reason": "zero-byte file"}\n')
    with OutputLock(tmp_path, "split-videos raw -o out", "split-videos"):
        pass
    with OutputLock(tmp_path, "split-videos raw -o out --rehash", "split-videos"):  # a re-run of the same command
        pass
    with pytest.raises(LockError, match=r"holds the output of split-videos; give caption-videos another output"):
        with OutputLock(tmp_path, "caption-videos out/clips.parquet -o out", "caption-videos"):
            pass
    with OutputLock(tmp_path, "split-videos raw -o out", "split-videos"):  # the refusal left the lock free
        pass
    assert "zero-byte file" in (tmp_path / "failed.jsonl").read_text()


def test_caption_videos_into_the_split_folder_is_refused_and_keeps_its_failures(sample_videos, tmp_path, capsys):
    from captioner.cli import main as caption
    from splitter.cli import main as split

    raw = tmp_path / "raw"
    shutil.copytree(sample_videos[0], raw)
    (raw / "empty.mp4").write_bytes(b"")
    out = tmp_path / "out"
    assert split([str(raw), "-o", str(out), "--detector", "content", "--no-progress"]) == 0
    failed = (out / "failed.jsonl").read_text()
    assert "zero-byte" in failed
    from captioner.testing import build_tiny_model

    model = build_tiny_model("qwen2-vl", tmp_path / "tiny")
    capsys.readouterr()
    assert caption([str(out / "clips.parquet"), "-o", str(out), "--model", str(model), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (f"caption-videos: error: {out} holds the output of split-videos; give "
                                               "caption-videos another output folder (no command writes over "
                                               "another one's files)")
    assert (out / "failed.jsonl").read_text() == failed
