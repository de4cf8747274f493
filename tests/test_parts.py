"""Batched parts: kill -9 during a batch's write or during compaction, re-run, and the rows are exactly those of
an uninterrupted run (none lost, none twice); parts of the one-file-per-unit layout are taken over, not redone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from index.engine import EngineOptions, run_stage
from index.parts import PartStore

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import os, sys
sys.path.insert(0, {tests!r})
from index import storage, parts
from index.engine import EngineOptions, run_stage
from index.parts import PartStore
from test_storage import Counting
mode, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
calls = [0]
if mode == "flush":  # killed while a batch is written: after its temp file, before the rename makes it a batch
    real = os.replace
    def replace(a, b):
        calls[0] += 1
        if calls[0] == 3:
            os._exit(137)
        return real(a, b)
    os.replace = replace
store = PartStore(out, "count", flush_units=40)
run_stage(Counting(n), store, EngineOptions(progress=False))
if mode == "compact":  # killed after the joined batch is written, before the batches it replaces are removed
    def remove_many(paths):
        os._exit(137)
    parts.storage.remove_many = remove_many
    store.compact(min_files=2)
"""


def child(mode: str, out: Path, n: int) -> int:
    code = CHILD.format(tests=str(ROOT / "tests"))
    return subprocess.run([sys.executable, "-c", code, mode, str(out), str(n)], timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode


def rows(out) -> pd.DataFrame:
    df, fails = PartStore(out, "count").merge(sort_by=("clip_id",))
    assert fails == []
    return df


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert child("plain", out, 200) == 0
    return rows(out)


@pytest.mark.parametrize("mode", ["flush", "compact"])
def test_a_kill_during_a_flush_or_a_compaction_loses_and_repeats_nothing(tmp_path, reference, mode):
    out = tmp_path / "out"
    assert child(mode, out, 200) == 137
    batches = sorted((out / ".parts" / "count").glob("*.parquet"))
    if mode == "flush":
        assert len(batches) == 2  # two batches committed; the third was cut off before its rename
    else:
        assert len(batches) == 6  # the five batches and the one joining them: the rows are there twice on disk
        assert sum(pq.read_metadata(b).num_rows for b in batches) == 2 * len(reference)
    again = PartStore(out, "count")
    report = run_stage(__import__("test_storage").Counting(200), again, EngineOptions(progress=False))
    assert report.done == (200 - 80 if mode == "flush" else 0)
    got = rows(out)
    assert got["clip_id"].is_unique
    pd.testing.assert_frame_equal(got, reference)
    if mode == "compact":  # the replaced batches were removed when the store was opened
        assert len(list((out / ".parts" / "count").glob("*.parquet"))) == 1


def test_compaction_joins_batches_and_keeps_every_key(tmp_path, reference):
    out = tmp_path / "c"
    assert child("plain", out, 200) == 0
    store = PartStore(out, "count")
    assert len(store.files()) == 5 and store.compact(min_files=2) == 5 and len(store.files()) == 1
    assert PartStore(out, "count").done_many([f"u{i:07d}" for i in range(200)]).all()
    pd.testing.assert_frame_equal(rows(out), reference)


def test_parts_of_one_file_per_unit_are_taken_over(tmp_path):
    folder = tmp_path / ".parts" / "split"
    folder.mkdir(parents=True)
    pd.DataFrame({"clip_id": ["a1", "a2"], "n": [1, 2]}).to_parquet(folder / "aaaa.parquet")
    pd.DataFrame({"clip_id": ["b1"], "n": [3]}).to_parquet(folder / "bbbb.parquet")
    (folder / "cccc.failed.json").write_text(json.dumps({"path": "raw/c.mp4", "stage": "split",
                                                         "reason": "zero-byte file", "ids": []}))
    (folder / "bbbb-0.failed.json").write_text(json.dumps({"path": "raw/b.mp4", "stage": "split",
                                                           "reason": "clip b2: past the end", "ids": ["b2"]}))
    store = PartStore(tmp_path, "split")
    assert store.done_many(["aaaa", "bbbb", "cccc", "dddd"]).tolist() == [True, True, True, False]
    assert [p.name for p in folder.iterdir() if p.name != "config.json"] == [store.files()[0].name]
    df, fails = store.merge(sort_by=("clip_id",))
    assert df["clip_id"].tolist() == ["a1", "a2", "b1"]
    assert fails == [{"path": "raw/b.mp4", "stage": "split", "reason": "clip b2: past the end"},
                     {"path": "raw/c.mp4", "stage": "split", "reason": "zero-byte file"}]
