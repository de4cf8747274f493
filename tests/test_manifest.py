"""The data contract: Clip ids, manifest round trips, schema checks, resumable parts."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index.manifest import (
    META_KEY, ManifestError, PartStore, export_manifest, read_failed, read_manifest, write_failed,
    write_manifest,
)
from index.record import CORE_COLUMNS, Clip, make_clip_id


def _clips(n=3, sha="ab" * 32, path="raw/a b;c.mp4"):
    return [Clip.from_range(path, sha, 25 * i, 25 * (i + 1), i, i + 1, 25.0, 640, 360) for i in range(n)]


def test_clip_id_is_stable_and_depends_on_content_and_range():
    a = make_clip_id("00" * 32, 0, 50)
    assert a == make_clip_id("00" * 32, 0, 50)
    assert a != make_clip_id("00" * 32, 0, 51)
    assert a != make_clip_id("11" * 32, 0, 50)
    clip = _clips(1)[0]
    assert clip.num_frames == 25 and clip.aspect_ratio == pytest.approx(0.5625)


def test_manifest_round_trip_keeps_rows_and_version(tmp_path):
    df = pd.DataFrame([c.to_dict() for c in _clips()])
    df["caption"] = ["a", "b", "c"]
    p = write_manifest(df, tmp_path / "clips.parquet")
    back = read_manifest(p)
    pd.testing.assert_frame_equal(back, df)
    assert pq.read_schema(p).metadata[META_KEY] == b"1"
    assert pd.read_parquet(p).shape == (3, len(CORE_COLUMNS) + 1)  # plain pandas reads it too
    assert not list(tmp_path.glob("*.tmp"))  # no temp file left behind


def test_manifest_errors_are_one_line(tmp_path):
    df = pd.DataFrame([c.to_dict() for c in _clips()])
    with pytest.raises(ManifestError, match="unknown columns mystery"):
        write_manifest(df.assign(mystery=1), tmp_path / "x.parquet")
    df.assign(score_aesthetic=0.5).pipe(write_manifest, tmp_path / "ok.parquet")  # free prefix is fine
    pq.write_table(pa.Table.from_pandas(df.drop(columns=["fps", "width"])), tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="missing columns: fps, width"):
        read_manifest(tmp_path / "m.parquet")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ManifestError) as e:
        read_manifest(tmp_path / "bad.parquet")
    assert "\n" not in str(e.value)
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "nope.parquet")


def test_newer_schema_version_is_refused(tmp_path):
    df = pd.DataFrame([c.to_dict() for c in _clips()])
    t = pa.Table.from_pandas(df).replace_schema_metadata({META_KEY: b"99"})
    pq.write_table(t, tmp_path / "new.parquet")
    with pytest.raises(ManifestError, match="newer"):
        read_manifest(tmp_path / "new.parquet")


def test_exports_read_back(tmp_path):
    df = pd.DataFrame([c.to_dict() for c in _clips()])
    for ext in ("jsonl", "csv"):
        back = read_manifest(export_manifest(df, tmp_path / f"clips.{ext}"))
        assert list(back.clip_id) == list(df.clip_id)


def test_parts_merge_sorted_and_resume_after_partial_run(tmp_path):
    store = PartStore(tmp_path, "split", config={"min_sec": 2})
    b = pd.DataFrame([c.to_dict() for c in _clips(2, sha="bb" * 32, path="raw/b.mp4")])
    a = pd.DataFrame([c.to_dict() for c in _clips(2, sha="aa" * 32, path="raw/a.mp4")])
    store.write("bb", b)
    assert store.done("bb") and not store.done("aa")  # buffered: done for this store already
    store.close()  # the batch is committed
    # a second run (new store object) sees the finished part and adds the rest
    store2 = PartStore(tmp_path, "split", config={"min_sec": 2})
    store2.write("aa", a)
    store2.fail("cc", "raw/c.mp4", "zero-byte\nfile")
    df, fails = store2.merge()
    assert list(df.video_path) == ["raw/a.mp4"] * 2 + ["raw/b.mp4"] * 2
    assert fails == [{"path": "raw/c.mp4", "stage": "split", "reason": "zero-byte file"}]
    write_failed(tmp_path, fails)
    assert read_failed(tmp_path) == fails
    assert json.loads((tmp_path / "failed.jsonl").read_text().splitlines()[0])["reason"] == "zero-byte file"


def test_a_failed_unit_is_done_unless_retried(tmp_path):
    with PartStore(tmp_path, "split") as store:
        store.fail("cc", "raw/c.mp4", "worker process died")
    assert PartStore(tmp_path, "split").done("cc")
    retry = PartStore(tmp_path, "split", retry_failed=True)
    assert not retry.done("cc")
    retry.write("cc", pd.DataFrame([c.to_dict() for c in _clips(1, sha="cc" * 32, path="raw/c.mp4")]))
    df, fails = retry.merge()
    assert fails == [] and list(df.video_path) == ["raw/c.mp4"] and retry.done("cc")


def test_parts_refuse_other_options(tmp_path):
    PartStore(tmp_path, "split", config={"min_sec": 2})
    with pytest.raises(ManifestError, match="min_sec"):
        PartStore(tmp_path, "split", config={"min_sec": 3})


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    from index.files import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = atomic_write_text(tmp_path / "atomic.txt", "x")  # not mkstemp's 0600: others on the cluster read it
    assert written.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_hand_edited_numbers_and_booleans_are_read_or_refused(tmp_path):
    df = pd.DataFrame([c.to_dict() for c in _clips(2)])
    df["keep"], df["caption_tokens"] = ["true", "false"], ["12", "7"]
    back = read_manifest(export_manifest(df, tmp_path / "hand.jsonl"))
    assert back["keep"].tolist() == [True, False] and back["caption_tokens"].tolist() == [12, 7]
    df["caption_tokens"] = ["12", "many"]
    with pytest.raises(ManifestError, match="caption_tokens holds 'many' .row 1., not an integer"):
        read_manifest(export_manifest(df, tmp_path / "bad.jsonl"))
    df["caption_tokens"], df["keep"] = [1, 2], ["yes", "maybe"]
    with pytest.raises(ManifestError, match="keep holds 'maybe'"):
        read_manifest(export_manifest(df, tmp_path / "bad.csv"))


def test_a_clip_that_failed_then_succeeded_in_another_clip_set_is_not_listed_as_failed(tmp_path):
    store = PartStore(tmp_path, "caption")
    store.fail("set1", "raw/a.mp4", "worker process died", ids=["c1", "c2"])
    store.write("set2", pd.DataFrame({"clip_id": ["c1", "c2"], "caption": ["x", "y"]}))  # --retry-failed did them
    store.fail("set3", "raw/b.mp4", "zero-byte file", ids=["c3"])
    df, fails = store.merge(sort_by=("clip_id",), ids={"c1", "c2", "c3"})
    assert df["clip_id"].tolist() == ["c1", "c2"]
    assert fails == [{"path": "raw/b.mp4", "stage": "caption", "reason": "zero-byte file"}]
