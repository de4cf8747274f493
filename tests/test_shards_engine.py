"""Cutting on the engine: --workers 2 and --engine ray give the output of --workers 1; sources are verified
through the hash cache (a re-run reads no unchanged source in full); one run per output folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import index.files
from index.engine import EngineOptions
from index.files import OutputLock
from index.manifest import read_failed, read_manifest
from index.shards.build import build_shards
from test_shards_data import assert_same_tars, make_shards_dataset, manifest_rows, tar_digest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = make_shards_dataset(tmp_path_factory.mktemp("engine-src"), shots=3, frames=16)
    d["df"] = read_manifest(d["manifest"])
    return d


def same_build(a: Path, b: Path) -> None:
    """Same shards, members, records and frames; same index (the byte positions aside: see tar_digest)."""
    assert_same_tars(tar_digest(a), tar_digest(b))
    ia, ib = pd.read_parquet(a / "index.parquet"), pd.read_parquet(b / "index.parquet")
    pd.testing.assert_frame_equal(ia.drop(columns=["offset", "size"]), ib.drop(columns=["offset", "size"]))


def test_two_local_workers_give_the_output_of_one(data, tmp_path):
    one = build_shards(data["df"], tmp_path / "one", dedup=False, shard_size=40_000,
                       engine=EngineOptions(workers=1, progress=False))
    two = build_shards(data["df"], tmp_path / "two", dedup=False, shard_size=40_000,
                       engine=EngineOptions(workers=2, progress=False))
    assert one.samples == two.samples == len(data["df"]) and len(one.shards) > 1
    same_build(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_ray_gives_the_output_of_local(data, tmp_path):
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:  # workers import this checkout's packages
        path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        build_shards(data["df"], tmp_path / "local", dedup=False, shard_size=40_000,
                     engine=EngineOptions(progress=False))
        rep = build_shards(data["df"], tmp_path / "ray", dedup=False, shard_size=40_000,
                           engine=EngineOptions(engine="ray", workers=2, progress=False))
        assert rep.samples == len(data["df"]) and not rep.failures
        same_build(tmp_path / "local", tmp_path / "ray")
    finally:
        if started:
            ray.shutdown()


def test_sources_are_hashed_once_and_changes_still_caught(data, tmp_path, monkeypatch):
    folder = tmp_path / "src"
    folder.mkdir()
    src = folder / "original.mp4"
    src.write_bytes((data["folder"] / "original.mp4").read_bytes())
    df = pd.DataFrame(manifest_rows(src, [(0, 10), (10, 20)], ["first", "second"]))
    build_shards(df, tmp_path / "out", dedup=False)
    reads = []
    real = index.files.file_sha256
    counting = lambda p, *a, **k: reads.append(p) or real(p, *a, **k)  # noqa: E731
    for name, module in list(sys.modules.items()):  # wherever a full hash can be asked for
        if (name == "index.files" or name.startswith("index.shards")) and hasattr(module, "file_sha256"):
            monkeypatch.setattr(module, "file_sha256", counting)
    more = pd.concat([df, pd.DataFrame(manifest_rows(src, [(20, 30)], ["third, new"]))], ignore_index=True)
    rep = build_shards(more, tmp_path / "out", dedup=False)  # the new clip needs its source: a stat, not a read
    assert rep.samples == 3 and reads == []
    with open(src, "ab") as f:
        f.write(b"\0" * 8)  # the source changes: its size and time do too
    newest = pd.concat([more, pd.DataFrame(manifest_rows(data["folder"] / "original.mp4", [(30, 40)], ["4th"]))],
                       ignore_index=True)
    newest.loc[3, ["video_path", "video_sha256"]] = [str(src), more.loc[0, "video_sha256"]]
    rep = build_shards(newest, tmp_path / "out", dedup=False)
    assert rep.samples == 3 and len(reads) == 1  # read in full once, found changed
    assert [f["reason"] for f in read_failed(tmp_path / "out")] == [
        "1 clips: video changed since it was split (sha256 mismatch)"]


def test_a_second_run_on_the_same_folder_exits_2_before_any_work(data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with OutputLock(out, "build-shards (the first run)"):
        run = subprocess.run([sys.executable, "-c", "import sys; from index.shards.cli import shards_main; "
                              "sys.exit(shards_main(sys.argv[1:]))", str(data["manifest"]), "-o", str(out),
                              "--no-dedup"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another run (build-shards (the first run), pid" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [".shotcap"]  # nothing written, nothing deleted
