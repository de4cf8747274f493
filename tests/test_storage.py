"""The storage layer against a real S3-API server: atomic objects, the lease lock, batched parts whose re-run costs
listings (not a request per unit), manifests of one file or a folder, and one-line errors for stores that cannot
be used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from index import storage
from index.engine import EngineOptions, Output, Stage, Unit, run_stage
from index.files import LockError, OutputLock
from index.manifest import ManifestError, manifest_files, read_manifest, write_manifest
from index.parts import PartStore

ROOT = Path(__file__).resolve().parents[1]


class Counting(Stage):
    """A stage without media: unit i makes `per` rows with a caption-sized text."""

    name = "count"

    def __init__(self, n: int, per: int = 3):
        self.n, self.per = n, per

    def units(self):
        return (Unit(f"u{i:07d}", f"src/{i}", i) for i in range(self.n))

    def process(self, state, unit):
        i = unit.data
        return Output(pd.DataFrame({"clip_id": [f"c{i}-{k}" for k in range(self.per)], "n": [i] * self.per,
                                    "caption": ["a red square moving left " * 10] * self.per}))

    def merge(self, store):
        return store.merge(sort_by=("clip_id",))


def test_objects_appear_whole_and_listings_see_them(s3):
    out = storage.location(s3) / "work"
    assert not storage.exists(out / "a.txt") and storage.listing(out) == {}
    storage.write_text(out / "a.txt", "hello")
    assert storage.read_text(out / "a.txt") == "hello" and set(storage.listing(out)) == {"a.txt"}
    assert storage.create_exclusive(out / "lease", b"1") and not storage.create_exclusive(out / "lease", b"2")
    assert storage.read_bytes(out / "lease") == b"1"  # the conditional put did not overwrite
    with storage.open_read(out / "a.txt") as f:
        assert f.read() == b"hello"


def test_the_lock_is_a_lease_a_second_run_is_refused_and_a_dead_holder_loses_it(s3):
    out = f"{s3}/out"
    with OutputLock(out, "split-videos raw -o out", "split-videos"):
        with pytest.raises(LockError, match=r"in use by another run \(split-videos raw -o out, pid"):
            with OutputLock(out, "split-videos again", "split-videos"):
                pass
    with OutputLock(out, "split-videos again", "split-videos"):  # released at the end of the first run
        pass
    # a run killed with SIGKILL leaves its lease; its process is gone, so the next run on this machine takes it
    code = ("import sys, os; from index.files import OutputLock; "
            f"OutputLock({out!r}, 'killed run', 'split-videos').__enter__(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert storage.exists(storage.location(out) / ".shotcap" / "lock")
    with OutputLock(out, "split-videos resumed", "split-videos"):
        pass
    with pytest.raises(LockError, match="holds the output of split-videos"):  # the folder's owner is kept too
        with OutputLock(out, "caption-videos", "caption-videos"):
            pass


def test_parts_on_a_bucket_are_batches_and_a_noop_rerun_costs_listings(s3, s3_server):
    out = f"{s3}/scale"
    store = PartStore(out, "count")
    first = run_stage(Counting(10_000), store, EngineOptions(progress=False))
    assert (first.done, first.skipped) == (10_000, 0)
    assert len(store.files()) == 10  # a batch per 1,000 units, not a file per unit
    s3_server.reset()
    again = run_stage(Counting(10_000), PartStore(out, "count"), EngineOptions(progress=False))
    assert (again.done, again.skipped) == (10_000 - 10_000, 10_000)
    assert s3_server.total < 50, dict(s3_server.requests)  # one listing and one read per batch, not per unit
    df, fails = PartStore(out, "count").merge(sort_by=("clip_id",))
    assert len(df) == 30_000 and df["clip_id"].is_unique and fails == []


def test_a_manifest_is_one_file_or_a_folder_written_last_to_first(s3, tmp_path):
    df = pd.DataFrame({"clip_id": [f"c{i:03d}" for i in range(250)], "video_path": "v.mp4", "video_sha256": "s",
                       "start_sec": 0.0, "end_sec": 1.0, "start_frame": 0, "end_frame": 25, "fps": 25.0,
                       "width": 64, "height": 48, "num_frames": 25, "aspect_ratio": 0.75})
    for base in (s3, str(tmp_path)):
        one = storage.location(base) / "one" / "clips.parquet"
        write_manifest(df, one)
        assert storage.is_file(one) and read_manifest(one).equals(df)
        folder = storage.location(base) / "many" / "clips.parquet"
        write_manifest(df, folder, rows_per_file=100)
        assert [f.name for f in manifest_files(folder)] == ["part-00000.parquet", "part-00001.parquet",
                                                            "part-00002.parquet"]
        assert read_manifest(folder).equals(df)
        storage.remove(folder / "_manifest.json")  # as if the command writing it had been killed
        with pytest.raises(ManifestError, match="being written or cut short"):
            read_manifest(folder)
        write_manifest(df.iloc[:50], folder, rows_per_file=100)  # the folder becomes one file again
        assert storage.is_file(folder) and len(read_manifest(folder)) == 50
    local = pd.read_parquet(tmp_path / "one" / "clips.parquet")  # plain pandas reads either shape
    assert local.equals(df)


@pytest.mark.parametrize("url,message", [
    ("nosuchscheme://bucket/raw", "not a storage scheme"),
    ("s3://no-such-bucket-here/raw", "no bucket or container 'no-such-bucket-here'"),
])
def test_a_store_that_cannot_be_used_is_one_line_before_any_work(s3, url, message, tmp_path):
    run = subprocess.run([sys.executable, "-m", "splitter.cli", url, "-o", str(tmp_path / "out")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("split-videos: error:") and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_an_unreachable_store_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_MAX_ATTEMPTS": "1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    run = subprocess.run([sys.executable, "-m", "splitter.cli", "s3://bucket/raw", "-o", str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the store" in lines[0], run.stderr[-500:]


def test_the_lease_names_its_holder(s3):
    out = storage.location(s3) / "named"
    with OutputLock(out, "score-clips m -o out", "score-clips"):
        held = json.loads(storage.read_bytes(out / ".shotcap" / "lock"))
        assert held["holder"].startswith("score-clips m -o out, pid") and held["expires"] > 0
    assert not storage.exists(out / ".shotcap" / "lock")


def test_scoring_a_source_on_a_bucket_reads_its_bytes_once(s3, s3_server, sample_videos, tmp_path):
    """bpp demuxes the source, then the scorers decode it: the object is copied once to local disk for the two
    passes (and the copy removed), so the store serves its bytes once, as for a scorer that only decodes."""
    import tempfile

    from index.manifest import read_manifest
    from scorer.cli import main as score_main
    from splitter.cli import main as split_main

    folder, _ = sample_videos
    video = sorted(folder.glob("*.mp4"))[0]
    storage.write_bytes(f"{s3}/raw/{video.name}", video.read_bytes())
    assert split_main([f"{s3}/raw", "-o", f"{s3}/split", "--detector", "content", "--no-progress"]) == 0
    before = set(os.listdir(tempfile.gettempdir()))
    served = {}
    for scorers in ("sharpness", "bpp,sharpness"):
        s3_server.reset()
        out = f"{s3}/{scorers.replace(',', '-')}"
        assert score_main([f"{s3}/split/clips.parquet", "-o", out, "--scorers", scorers, "--quiet"]) == 0
        served[scorers] = s3_server.bytes_out
        scored = read_manifest(f"{out}/clips.parquet")
        assert len(scored) >= 1 and scored["sharpness"].notna().all()
    assert scored["bpp"].gt(0).all()
    size = video.stat().st_size
    assert served["sharpness"] >= size  # the decode read the object (plus the manifests)
    assert served["bpp,sharpness"] - served["sharpness"] < 0.2 * size, (served, size)  # not a second pass
    assert not [n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("shotcap-source-")]
