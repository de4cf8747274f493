"""The whole pipeline as a user runs it (one subprocess per command): raw videos -> split-videos ->
caption-videos (tiny random VLM) -> index-clips -> build-shards -> a few training steps.

Then every stage is killed with SIGKILL at a point drawn from a seeded generator (after its k-th finished
unit) and re-run: its outputs are identical to the uninterrupted run's. The bad-input corpus, a source deleted
between stages, a hand-edited manifest with a bad row and an output folder that cannot be written go through
the stages: one-line errors, nothing lost, no partial file left behind.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from index.manifest import read_failed, read_manifest, write_manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SEED = 20240606
CAPTION = ["--num-frames", "4", "--max-new-tokens", "8", "--batch-size", "4", "--quiet"]
SHARDS_MAIN = "import sys; from index.shards.cli import shards_main; sys.exit(shards_main(sys.argv[1:]))"
TRAIN = ["data.buckets=[[4,16,16]]", "data.batch_size=2", "text.max_length=8", "optim.warmup_steps=1",
         "train.ckpt_every=2", "train.log_every=1"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def commands(work, raw, model: Path) -> dict[str, list[str]]:
    """The stages' command lines; `work` and `raw` are folders or URLs (s3://...)."""
    py, at = sys.executable, lambda *names: "/".join([str(work), *names])
    return {
        "split": [py, "-m", "splitter.cli", str(raw), "-o", at("split"), "--detector", "content", "--no-progress"],
        "caption": [py, "-m", "captioner.cli", at("split", "clips.parquet"), "-o", at("cap"), "--model", str(model),
                    *CAPTION],
        "index": [py, "-m", "index.dedup.cli", at("cap", "clips.parquet"), "-o", at("idx")],
        "shards": [py, "-c", SHARDS_MAIN, at("cap", "clips.parquet"), "-o", at("shards"), "--index", at("idx"),
                   "--shard-size", "40KB", "--allow-flags", "all"],
    }


# what each stage writes, and the file that appears when one of its units is finished
OUTPUT = {"split": "split", "caption": "cap", "index": "idx", "shards": "shards"}
UNIT_DONE = {"split": "split/.parts/split/*.parquet", "caption": "cap/.parts/*/*.parquet",
             "index": "idx/.parts/embed/*.parquet", "shards": "shards/.staging/*.mp4"}
STAGES = list(OUTPUT)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env(), cwd=REPO, **kw)


def run_ok(cmd) -> subprocess.CompletedProcess:
    proc = run(cmd)
    assert proc.returncode == 0, f"{cmd[1:4]} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def kill_after(cmd, work: Path, pattern: str, k: int) -> int:
    """Start `cmd`, SIGKILL it once `k` units are finished; returns the exit status (-9 when killed)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(), cwd=REPO)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if len(list(work.glob(pattern))) >= k:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    return proc.wait()


def leftovers(folder: Path) -> list[str]:
    """Temp files of an interrupted atomic write (`.NAME.XXXX.tmp`, `.NAME.tmp`)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


# ---------------------------------------------------------------- comparisons

def same_rows(a: pd.DataFrame, b: pd.DataFrame, sources: tuple[str, str] | None = None) -> None:
    """Same rows and values, order aside; `sources` = (prefix in b, prefix in a): b's videos were read from
    another place (a bucket), so its video paths start otherwise."""
    if sources:
        b = b.assign(video_path=b["video_path"].str.replace(sources[0], sources[1], regex=False))
    assert sorted(a.columns) == sorted(b.columns)
    cols = sorted(a.columns)
    a = a[cols].sort_values("clip_id", kind="stable").reset_index(drop=True)
    b = b[cols].sort_values("clip_id", kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


def assert_same_output(stage: str, ref: Path, work: Path, sources: tuple[str, str] | None = None) -> None:
    a, b = ref / OUTPUT[stage], work / OUTPUT[stage]
    if stage in ("split", "caption", "index"):
        same_rows(read_manifest(a / "clips.parquet"), read_manifest(b / "clips.parquet"), sources)
        assert read_failed(a) == read_failed(b)
    if stage == "index":
        for name in ("visual.npy", "text.npy"):
            assert np.array_equal(np.load(a / name), np.load(b / name)), name
        assert (a / "visual.faiss").read_bytes() == (b / "visual.faiss").read_bytes()
    if stage == "shards":
        tars = sorted(p.name for p in a.glob("*.tar"))
        assert tars == sorted(p.name for p in b.glob("*.tar"))
        for name in tars:  # same members in the same order, same json bytes, the clips hold the same frames
            assert_same_shard(a / name, b / name, sources)
        ia, ib = pd.read_parquet(a / "index.parquet"), pd.read_parquet(b / "index.parquet")
        if sources and "video_path" in ib:
            ib["video_path"] = ib["video_path"].str.replace(sources[0], sources[1], regex=False)
        pd.testing.assert_frame_equal(ia, ib)
        assert not (b / ".staging").exists()


def assert_same_shard(a: Path, b: Path, sources: tuple[str, str] | None = None) -> None:
    """mp4 bytes are not compared: libx264 output can differ by a few bytes between processes (see the
    index/shards.py docstring); the decoded frames are. `sources`: as in `same_rows` (a sample's json names
    its source video, read from elsewhere in b)."""
    import io
    import tarfile

    from index.video import iter_frames

    def members(path):
        with tarfile.open(path) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}

    ma, mb = members(a), members(b)
    assert list(ma) == list(mb), a.name
    for name, data in ma.items():
        if name.endswith(".json"):
            other = mb[name]
            if sources:
                other = other.replace(json.dumps(sources[0])[1:-1].encode(), json.dumps(sources[1])[1:-1].encode())
            assert data == other, name
        else:
            fa = np.stack([f.image for f in iter_frames(io.BytesIO(data))]).astype(int)
            fb = np.stack([f.image for f in iter_frames(io.BytesIO(mb[name]))]).astype(int)
            # libx264 output can drift by a grey level or two between runs (seen: 1.4); a clip shifted by one
            # frame differs by 4 or more on these videos
            assert fa.shape == fb.shape and np.abs(fa - fb).mean() < 2.5, name


# ---------------------------------------------------------------- the uninterrupted run

@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    from captioner.testing import build_tiny_model

    return Path(build_tiny_model("qwen2-vl", tmp_path_factory.mktemp("tiny_vlm")))


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    from index import synth

    folder = tmp_path_factory.mktemp("raw")
    synth.make_sample_videos(folder, count=3, seconds=6.0, size=(96, 64))
    return folder


@pytest.fixture(scope="module")
def reference(raw, tiny_vlm, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("reference")
    for stage, cmd in commands(work, raw, tiny_vlm).items():
        run_ok(cmd)
    return work


def test_uninterrupted_run_gives_captioned_shards_that_train(reference, tmp_path):
    clips = read_manifest(reference / "cap" / "clips.parquet")
    assert len(clips) >= 3 and clips["caption"].map(lambda c: isinstance(c, str) and bool(c)).all()
    index = pd.read_parquet(reference / "shards" / "index.parquet")
    assert sorted(index["clip_id"]) == sorted(clips["clip_id"])
    assert len(list((reference / "shards").glob("*.tar"))) >= 2  # small shards: several files
    out = tmp_path / "run"
    run_ok([sys.executable, "-m", "trainer.train", "--config", str(REPO / "trainer" / "configs" / "tiny.yaml"),
            "--data", str(reference / "shards"), "--max-steps", "2", "--output-dir", str(out), *TRAIN])
    assert (out / "checkpoints" / "2" / "ema" / "diffusion_pytorch_model.safetensors").exists()
    assert "loss" in (out / "metrics.jsonl").read_text()


@pytest.mark.parametrize("stage", STAGES)
def test_kill_at_a_random_point_then_rerun_gives_the_same_outputs(stage, reference, raw, tiny_vlm, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for earlier in STAGES[:STAGES.index(stage)]:  # the inputs of this stage, as the reference made them
        shutil.copytree(reference / OUTPUT[earlier], work / OUTPUT[earlier])
    if stage == "shards":  # staged clips are removed once the shards are written
        units = len(pd.read_parquet(reference / "shards" / "index.parquet"))
    else:
        units = len(list(reference.glob(UNIT_DONE[stage])))
    k = random.Random(f"{SEED}-{stage}").randint(1, max(1, units - 1))
    cmd = commands(work, raw, tiny_vlm)[stage]
    status = kill_after(cmd, work, UNIT_DONE[stage], k)
    assert status == -signal.SIGKILL, f"{stage} finished before the kill point ({k} of {units} units)"
    run_ok(cmd)
    assert_same_output(stage, reference, work)
    assert leftovers(work / OUTPUT[stage]) == []


# ---------------------------------------------------------------- hostile inputs

def test_hostile_corpus_and_a_source_deleted_between_stages(raw, tiny_vlm, tmp_path):
    from hostile import make_corpus

    corpus = make_corpus(tmp_path / "raw")
    work = tmp_path / "work"
    cmds = commands(work, tmp_path / "raw", tiny_vlm)
    run_ok(cmds["split"])
    failed = {Path(f["path"]).name: f["reason"] for f in read_failed(work / "split")}
    clips = read_manifest(work / "split" / "clips.parquet")
    split_names = {Path(p).name for p in clips["video_path"]}
    for name, case in corpus.items():
        if case.expect == "fail":
            assert case.reason in failed.get(name, ""), (name, failed.get(name))
            assert "\n" not in failed[name]
        else:
            assert name in split_names, (name, failed.get(name))
    assert set(failed) | split_names == set(corpus)  # every file is accounted for

    gone = tmp_path / "raw" / "name with spaces.mp4"  # deleted between split and caption
    gone.unlink()
    run_ok(cmds["caption"])
    cap = read_manifest(work / "cap" / "clips.parquet")
    cap_failed = read_failed(work / "cap")
    assert [Path(f["path"]).name for f in cap_failed] == [gone.name]
    kept = clips[clips["video_path"] != str(gone)]
    assert sorted(cap["clip_id"]) == sorted(kept["clip_id"])  # every other clip captioned, none lost
    assert cap["caption"].map(lambda c: isinstance(c, str) and bool(c)).all()

    run_ok(cmds["index"])
    idx = read_manifest(work / "idx" / "clips.parquet")
    assert sorted(idx["clip_id"]) == sorted(cap["clip_id"])
    run_ok(cmds["shards"])
    shards = pd.read_parquet(work / "shards" / "index.parquet")
    dropped = set(idx.loc[~idx["keep"].astype(bool), "clip_id"])
    assert set(shards["clip_id"]) | dropped == set(cap["clip_id"])  # in a shard or a known duplicate
    # without dedup every hostile clip (rotated, anamorphic, VFR, first PTS at 3 s) is cut into a shard
    run_ok([*cmds["shards"][:4], "-o", str(work / "all"), "--no-dedup", "--allow-flags", "all"])
    everything = pd.read_parquet(work / "all" / "index.parquet")
    assert set(everything["clip_id"]) == set(cap["clip_id"])
    assert leftovers(work) == []


def _bad_row(manifest: Path, dst: Path) -> tuple[pd.DataFrame, str]:
    """The manifest with one row edited by hand: its range runs past the end of its video."""
    df = read_manifest(manifest).sort_values(["video_path", "start_frame"]).reset_index(drop=True)
    df.loc[0, "end_frame"] = 10**6
    write_manifest(df, dst)
    return df, str(df.loc[0, "clip_id"])


@pytest.mark.parametrize("stage", ["caption", "index", "shards"])
def test_hand_edited_manifest_with_a_bad_row(stage, reference, raw, tiny_vlm, tmp_path):
    source = reference / ("split" if stage == "caption" else "cap") / "clips.parquet"
    bad = tmp_path / "edited.parquet"
    df, bad_id = _bad_row(source, bad)
    work = tmp_path / "work"
    cmd = commands(work, raw, tiny_vlm)[stage]
    cmd[cmd.index(str(source).replace(str(reference), str(work)))] = str(bad)
    if stage == "shards":
        cmd = [*cmd[:cmd.index("--index")], "--no-dedup"]
    run_ok(cmd)
    out = work / OUTPUT[stage]
    failed = read_failed(out)
    assert len(failed) == 1 and bad_id in failed[0]["reason"] and "\n" not in failed[0]["reason"]
    done = pd.read_parquet(out / ("index.parquet" if stage == "shards" else "clips.parquet"))
    assert set(done["clip_id"]) == set(df["clip_id"]) - {bad_id}  # the other rows, all of them
    assert leftovers(out) == []


def _unwritable(limit_bytes: int):
    """Runs in the child: files may not grow past `limit_bytes` (EFBIG), as on a full disk. Root ignores a
    read-only folder, so this stands in for one when the tests run as root."""
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


@pytest.mark.parametrize("stage", STAGES)
def test_unwritable_output_is_a_clear_error_and_loses_nothing(stage, reference, raw, tiny_vlm, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for earlier in STAGES[:STAGES.index(stage)]:
        shutil.copytree(reference / OUTPUT[earlier], work / OUTPUT[earlier])
    cmd = commands(work, raw, tiny_vlm)[stage]
    out = work / OUTPUT[stage]
    if os.geteuid() == 0:
        proc = run(cmd, preexec_fn=_unwritable(64))
    else:
        out.mkdir()
        out.chmod(0o555)
        try:
            proc = run(cmd)
        finally:
            out.chmod(0o755)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert "error" in last.lower()
    assert leftovers(work) == []
    run_ok(cmd)  # the same command on a writable folder finishes, with the uninterrupted run's outputs
    assert_same_output(stage, reference, work)


# ---------------------------------------------------------------- on a bucket (a real S3-API server on 127.0.0.1)

def _bucket_fs():
    import fsspec

    return fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False)


def _fetch(url: str, local: Path) -> Path:
    """A copy of a folder on the bucket, to compare with the local run's files."""
    fs, prefix = _bucket_fs(), url.split("://", 1)[1].rstrip("/") + "/"
    for key in fs.find(url):
        dst = local / key[len(prefix):]
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(fs.cat_file(key))
    return local


def _upload(local: Path, url: str) -> None:
    fs = _bucket_fs()
    for p in sorted(local.rglob("*")):
        if p.is_file():
            fs.pipe_file(f"{url}/{p.relative_to(local).as_posix()}", p.read_bytes())


def _train(data: str, out: Path) -> list[float]:
    run_ok([sys.executable, "-m", "trainer.train", "--config", str(REPO / "trainer" / "configs" / "tiny.yaml"),
            "--data", data, "--max-steps", "2", "--output-dir", str(out), *TRAIN])
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_pipeline_on_a_bucket_gives_the_local_outputs(reference, raw, tiny_vlm, s3, tmp_path, monkeypatch):
    """split -> caption -> index -> shards with every input and output on S3, then a training run reading its
    shards by URL: the same rows, failures, vectors, index, shards and losses as the local run. Its merges sort in
    pieces of 2 rows (as a manifest past SHOTCAP_SORT_ROWS is sorted), the local run's in one: the same rows."""
    monkeypatch.setenv("SHOTCAP_SORT_ROWS", "2")
    _upload(raw, f"{s3}/raw")
    cmds = commands(f"{s3}/work", f"{s3}/raw", tiny_vlm)
    for stage in STAGES:
        run_ok(cmds[stage])
        got = _fetch(f"{s3}/work/{OUTPUT[stage]}", tmp_path / "work" / OUTPUT[stage])
        assert leftovers(got) == [], stage  # no temp object left behind
        assert_same_output(stage, reference, tmp_path / "work", (f"{s3}/raw", str(raw)))
    assert _train(f"{s3}/work/shards", tmp_path / "s3run") == _train(str(reference / "shards"), tmp_path / "run")


def _kill_after_objects(cmd, pattern: str, k: int) -> int:
    """Start `cmd`, SIGKILL it once `k` objects match `pattern` on the bucket (a listing per look)."""
    fs = _bucket_fs()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                            env={**env(), "SHOTCAP_FLUSH_SECONDS": "0"})  # a batch per finished unit
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if len(fs.glob(pattern)) >= k:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    return proc.wait()


@pytest.mark.parametrize("stage", ["split", "caption"])
def test_kill_on_a_bucket_then_rerun_gives_the_same_outputs(stage, reference, raw, tiny_vlm, s3, tmp_path):
    _upload(raw, f"{s3}/raw")
    if stage == "caption":
        _upload(reference / "split", f"{s3}/work/split")  # its clips point at the local videos
    cmds = commands(f"{s3}/work", f"{s3}/raw", tiny_vlm)
    units = len(list(reference.glob(UNIT_DONE[stage])))
    k = random.Random(f"{SEED}-s3-{stage}").randint(1, max(1, units - 1))
    pattern = f"{s3}/work/{UNIT_DONE[stage]}".split("://", 1)[1]
    status = _kill_after_objects(cmds[stage], pattern, k)
    assert status == -signal.SIGKILL, f"{stage} finished before the kill point ({k} of {units} units)"
    run_ok(cmds[stage])
    got = _fetch(f"{s3}/work/{OUTPUT[stage]}", tmp_path / "work" / OUTPUT[stage])
    assert leftovers(got) == []
    assert_same_output(stage, reference, tmp_path / "work", (f"{s3}/raw", str(raw)))


def test_ray_on_a_bucket_gives_the_local_outputs(reference, tiny_vlm, s3, tmp_path):
    """`--engine ray`: the actors write their batches to the bucket themselves; the manifest is the local one."""
    pytest.importorskip("ray")
    _upload(reference / "split", f"{s3}/work/split")
    cmd = commands(f"{s3}/work", "unused", tiny_vlm)["caption"]
    run_ok([*cmd, "--engine", "ray", "--workers", "2"])
    _fetch(f"{s3}/work/cap", tmp_path / "work" / "cap")
    assert_same_output("caption", reference, tmp_path / "work")
