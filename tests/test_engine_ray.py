"""The Ray engine against the local one: same units in, same manifest out (order aside), on synthetic and
real clips; a unit that raises or whose actor dies becomes a failure record, the run goes on.

One local Ray (`ray.init(num_cpus=2)`) serves the whole module.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from index.engine import DIED, EngineError, EngineOptions, Output, Unit, run_stage
from index.manifest import PartStore, read_manifest
from test_engine import Toy

pytestmark = pytest.mark.slow  # a Ray start, actors loading TransNetV2 and a tiny VLM


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    here = Path(__file__).resolve().parent  # workers import this module's functions by name
    path = os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same columns, same rows and values, order aside."""
    assert sorted(a.columns) == sorted(b.columns)
    cols = sorted(a.columns)
    a = a[cols].sort_values("clip_id").reset_index(drop=True)
    b = b[cols].sort_values("clip_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


# ---------------------------------------------------------------- the engine itself

def _run(tmp_path, items, stage=None, **options):
    store = PartStore(tmp_path, "toy")
    report = run_stage(stage or Toy(items), store, EngineOptions(progress=False, **options))
    df, fails = store.merge(sort_by=("clip_id",))
    return report, df, fails


def test_ray_gives_the_same_parts_as_local_and_builds_each_worker_once(ray_session, tmp_path):
    items = [1, 2, "bad", 3, 4, 5]
    _, local, local_fails = _run(tmp_path / "local", items)
    report, remote, remote_fails = _run(tmp_path / "ray", items, engine="ray", workers=2)
    pd.testing.assert_frame_equal(local.drop(columns="pid"), remote.drop(columns="pid"))
    assert local_fails == remote_fails and report.failed == 1
    assert 1 <= remote["pid"].nunique() <= 2 and os.getpid() not in set(remote["pid"])  # two actors, loaded once


class Prepared(Toy):
    """`prepare` (decoding) runs in separate Ray tasks ahead of the actors; its result reaches `process`."""

    has_prepare = True

    def prepare(self, unit):
        return Unit(unit.key, unit.path, (unit.data, os.getpid()), unit.weight, unit.ids)

    def process(self, pid, unit):
        x, prep_pid = unit.data
        out = super().process(pid, Unit(unit.key, unit.path, x))
        return Output(out.rows.assign(prep_pid=prep_pid), out.failures)


def test_prepare_runs_as_separate_tasks_that_feed_the_workers(ray_session, tmp_path):
    _, remote, _ = _run(tmp_path / "ray", [1, 2, 3, 4], Prepared([1, 2, 3, 4]), engine="ray", workers=2)
    _, local, _ = _run(tmp_path / "local", [1, 2, 3, 4], Prepared([1, 2, 3, 4]))
    assert remote["twice"].tolist() == local["twice"].tolist() == [2, 4, 6, 8]
    assert os.getpid() not in set(remote["prep_pid"]) and set(local["prep_pid"]) == {os.getpid()}


def test_more_workers_than_the_cluster_holds_do_not_hang(ray_session, tmp_path):
    import threading

    runs = []
    for k, stage in enumerate((Toy(range(6)), Prepared(range(6)))):  # 2 CPUs: 2 actors, or 2 x 0.5 + decoding
        t = threading.Thread(target=lambda s=stage, k=k: runs.append(_run(tmp_path / str(k), None, s, engine="ray",
                                                                          workers=5)), daemon=True)
        t.start()
        t.join(180)
        assert not t.is_alive(), f"{type(stage).__name__} with 5 workers hung"
    assert [r[0].done for r in runs] == [6, 6]


def test_a_dead_actor_fails_only_its_unit_and_is_replaced(ray_session, tmp_path):
    _, df, fails = _run(tmp_path, [1, "die", 2, 3], engine="ray", workers=2)
    assert df["clip_id"].tolist() == ["c1", "c2", "c3"]
    assert fails == [{"path": "src/die", "stage": "toy", "reason": DIED}]


class NoModel(Toy):
    def load(self):
        raise OSError("model folder /nope is missing")


def test_a_bug_or_a_worker_that_cannot_start_stops_the_run_and_marks_nothing(ray_session, tmp_path):
    with pytest.raises(KeyError, match="a bug in process"):
        _run(tmp_path / "bug", [1, "bug"], engine="ray")
    assert not PartStore(tmp_path / "bug", "toy").done("ubug")
    with pytest.raises(EngineError, match="could not start: OSError: model folder /nope is missing"):
        _run(tmp_path / "nomodel", [1, 2], NoModel([1, 2]), engine="ray")
    assert not list(PartStore(tmp_path / "nomodel", "toy").dir.glob("*"))  # nothing marked failed
    with pytest.raises(ValueError, match="unknown engine 'spark'"):
        EngineOptions(engine="spark")


# ---------------------------------------------------------------- split-videos: local vs Ray

def _split_both(raw: Path, tmp: Path, **kw) -> tuple[pd.DataFrame, pd.DataFrame]:
    from splitter.pipeline import split_videos

    local = read_manifest(split_videos(raw, tmp / "local", progress=False, **kw)[0])
    remote = read_manifest(split_videos(raw, tmp / "ray", progress=False, engine=EngineOptions("ray", workers=2), **kw)[0])
    return local, remote


def test_split_on_ray_equals_local_on_synthetic_videos(ray_session, sample_videos, tmp_path):
    raw, truths = sample_videos
    local, remote = _split_both(raw, tmp_path, detector="content")
    assert len(local) >= len(truths)
    same_rows(local, remote)
    same_rows(read_manifest(tmp_path / "ray" / "clips.parquet"), remote)


def test_split_on_ray_equals_local_on_real_clips(ray_session, realdata, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("bikes.mp4", "cityCC0.mpg"):
        shutil.copy(realdata / name, raw / name)
    local, remote = _split_both(raw, tmp_path)
    assert set(Path(p).name for p in local["video_path"]) == {"bikes.mp4", "cityCC0.mpg"}
    same_rows(local, remote)
    # resume: a Ray re-run over a finished folder changes nothing
    before = {p.name: p.read_bytes() for p in (tmp_path / "ray" / ".parts" / "split").glob("*.parquet")}
    _, again = _split_both(raw, tmp_path)
    same_rows(again, remote)
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "ray" / ".parts" / "split").glob("*.parquet")}


# ---------------------------------------------------------------- caption-videos: local vs Ray

@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from captioner.testing import build_tiny_model

    return build_tiny_model("qwen2-vl", tmp_path_factory.mktemp("tiny_vlm"))


@pytest.fixture(scope="module")
def captioned(ray_session, sample_videos, tiny_vlm, tmp_path_factory) -> Path:
    """split (local) -> caption-videos with the local engine into local/ and with Ray into ray/."""
    from captioner.cli import main as caption_main
    from splitter.pipeline import split_videos

    tmp = tmp_path_factory.mktemp("captioned")
    split_videos(sample_videos[0], tmp / "split", detector="content", progress=False)
    manifest = tmp / "split" / "clips.parquet"
    common = ["--model", str(tiny_vlm), "--num-frames", "4", "--max-new-tokens", "8", "--batch-size", "4",
              "--quiet"]
    assert caption_main([str(manifest), "-o", str(tmp / "local"), *common]) == 0
    assert caption_main([str(manifest), "-o", str(tmp / "ray"), *common, "--engine", "ray", "--workers", "2"]) == 0
    return tmp


def test_caption_on_ray_equals_local(captioned):
    local = read_manifest(captioned / "local" / "clips.parquet")
    remote = read_manifest(captioned / "ray" / "clips.parquet")
    assert local["caption"].map(lambda c: isinstance(c, str) and bool(c)).all()
    same_rows(local, remote)
    # the Ray workers wrote their own batches, holding the same units (one per source video) as locally
    stages = sorted(p.name for p in (captioned / "local" / ".parts").iterdir())
    assert stages == sorted(p.name for p in (captioned / "ray" / ".parts").iterdir())
    for name in stages:
        assert PartStore(captioned / "ray", name).keys() == PartStore(captioned / "local", name).keys()


# ---------------------------------------------------------------- index-clips and build-shards: local vs Ray

def test_index_and_shards_on_ray_equal_local(captioned, tmp_path):
    import numpy as np

    from index.dedup.cli import index_main
    from index.shards.cli import shards_main

    manifest = captioned / "local" / "clips.parquet"
    for engine in ("local", "ray"):
        assert index_main([str(manifest), "-o", str(tmp_path / f"idx_{engine}"), "--engine", engine,
                           "--workers", "2"]) == 0
        assert shards_main([str(manifest), "-o", str(tmp_path / f"shards_{engine}"), "--index",
                            str(tmp_path / f"idx_{engine}"), "--engine", engine, "--workers", "2",
                            "--allow-flags", "all"]) == 0  # a tiny random model's captions are all flagged
    a, b = tmp_path / "idx_local", tmp_path / "idx_ray"
    same_rows(read_manifest(a / "clips.parquet"), read_manifest(b / "clips.parquet"))
    for name in ("visual.npy", "text.npy"):
        assert np.array_equal(np.load(a / name), np.load(b / name)), name
    a, b = tmp_path / "shards_local", tmp_path / "shards_ray"
    tars = sorted(p.name for p in a.glob("*.tar"))
    assert tars and tars == sorted(p.name for p in b.glob("*.tar"))
    for name in tars:  # the same bytes: cutting and encoding are deterministic, whatever process runs them
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_parquet(a / "index.parquet"), pd.read_parquet(b / "index.parquet"))

