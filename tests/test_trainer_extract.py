"""Pre-computed features: shards written as they are computed, read lazily, resumable after kill -9."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from index.manifest import read_failed, read_manifest, write_manifest
from trainer.data import FeatureDataset, collate, open_dataset, safetensors_header
from trainer.encoders import TextEncoder, build_vae
from trainer.extract import extract_features, main as extract_main
from trainer.testing import make_square_manifest, make_tiny_t5, make_tiny_vae

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    manifest = make_square_manifest(root / "data", count=5, frames=4, size=16)
    return manifest, make_tiny_vae(str(root / "vae")), make_tiny_t5(str(root / "t5"))


def test_features_are_shards_read_lazily_with_the_encoders_values(setup, tmp_path):
    manifest, vae_path, t5_path = setup
    vae = build_vae("sd-vae", path=vae_path, sample=False)
    text = TextEncoder(t5_path, "t5", max_length=8)
    dataset = open_dataset(manifest)
    counts = extract_features(dataset, [[4, 16, 16]], vae, text, tmp_path / "f", shard_clips=2, batch_size=2)
    assert counts == {"clips": 5, "failed": 0, "shards": 3, "written": 3, "kept": 0}
    assert sorted(p.name for p in (tmp_path / "f").glob("*.safetensors")) == [
        "features-00000.safetensors", "features-00001.safetensors", "features-00002.safetensors"]
    index = pd.read_parquet(tmp_path / "f" / "index.parquet")
    assert sorted(index["clip_id"]) == sorted(read_manifest(manifest)["clip_id"])  # each clip once
    # the index's offsets point at the tensors the safetensors header names
    header, start = safetensors_header(tmp_path / "f" / "features-00001.safetensors")
    row = index[index["shard"] == "features-00001.safetensors"].iloc[1]
    assert row["y_offset"] == start + header["y.1"]["data_offsets"][0] and list(row["y_shape"]) == [8, 32]
    feats = open_dataset(tmp_path / "f")
    assert isinstance(feats, FeatureDataset) and len(feats) == 5 and feats.shapes()[0] == (4, 16, 16)
    assert not hasattr(feats, "tensors")  # nothing but the index is held
    batch = collate([feats[(i, (4, 16, 16))] for i in range(len(feats))])
    assert batch["latents"].shape == (5, 4, 4, 8, 8) and batch["y"].shape == (5, 8, 32)
    by_id = {r["clip_id"]: i for i, r in dataset.rows.iterrows()}
    for k, clip_id in enumerate(batch["clip_id"]):  # every clip's features are its own
        clip = dataset[(by_id[clip_id], (4, 16, 16))]
        assert torch.allclose(batch["latents"][k], vae.encode(clip["video"][None])[0], atol=1e-5)
        y, mask = text([clip["caption"]])
        assert torch.allclose(batch["y"][k], y[0], atol=1e-5) and torch.equal(batch["mask"][k], mask[0])
        assert batch["caption"][k] == clip["caption"]


def test_a_clip_that_cannot_be_read_is_recorded_not_replaced(setup, tmp_path):
    manifest, vae_path, t5_path = setup
    df = read_manifest(manifest)
    data = tmp_path / "data"
    data.mkdir()
    for name in df["video_path"]:
        (data / name).write_bytes((manifest.parent / name).read_bytes())
    (data / df.loc[2, "video_path"]).write_bytes(b"not a video")
    write_manifest(df, data / "clips.parquet")
    vae, text = build_vae("sd-vae", path=vae_path), TextEncoder(t5_path, "t5", max_length=8)
    counts = extract_features(open_dataset(data / "clips.parquet"), [[4, 16, 16]], vae, text, tmp_path / "f",
                              shard_clips=2, source=str(data / "clips.parquet"))
    assert counts["clips"] == 4 and counts["failed"] == 1
    index = pd.read_parquet(tmp_path / "f" / "index.parquet")
    assert df.loc[2, "clip_id"] not in set(index["clip_id"]) and len(set(index["clip_id"])) == 4
    (failed,) = read_failed(tmp_path / "f")
    assert failed["stage"] == "extract" and df.loc[2, "clip_id"] in failed["reason"]


def test_old_single_file_and_incomplete_folders_are_clear_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"latents.0": torch.zeros(2)}, str(tmp_path / "old.safetensors"))
    with pytest.raises(ValueError, match="older trainer.extract"):
        open_dataset(tmp_path / "old.safetensors")
    (tmp_path / "half").mkdir()
    save_file({"latents.0": torch.zeros(2)}, str(tmp_path / "half" / "features-00000.safetensors"))
    with pytest.raises(ValueError, match="incomplete features folder"):
        open_dataset(tmp_path / "half")


@pytest.mark.slow
def test_kill_9_then_rerun_finishes_only_the_missing_shards_with_the_same_result(setup, tmp_path):
    manifest, vae_path, _ = setup
    args = ["--config", str(REPO / "trainer/configs/tiny.yaml"), "--data", str(manifest), "--device", "cpu",
            "--shard-clips", "2", "vae.kind=sd-vae", f"vae.path={vae_path}", "data.buckets=[[4,16,16]]",
            "data.batch_size=2", f"train.output_dir={tmp_path / 'run'}"]  # the tiny text encoder is built there
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-m", "trainer.extract", *args, "-o", str(tmp_path / "a"),
                             "--kill-after-shards", "2"], capture_output=True, text=True, env=env, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "a").glob("features-*")}
    assert sorted(first) == ["features-00000.safetensors", "features-00001.safetensors"]
    with pytest.raises(ValueError, match="incomplete features folder"):
        open_dataset(tmp_path / "a")
    assert extract_main([*args, "-o", str(tmp_path / "a")]) == 0  # the same command again
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "a").glob("features-*")}
    assert {k: done[k] for k in first} == first  # the finished shards were kept, not written again
    assert json.loads((tmp_path / "a" / "features.json").read_text())["kept"] == 2
    assert extract_main([*args, "-o", str(tmp_path / "b")]) == 0  # a run never killed
    for name in done:  # posterior samples are seeded per shard: the same values whichever run wrote a shard
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)  # (up to float rounding:
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # threads differ)
        assert safetensors_header(tmp_path / "a" / name)[0]["__metadata__"] == \
            safetensors_header(tmp_path / "b" / name)[0]["__metadata__"]
    assert pd.read_parquet(tmp_path / "a" / "index.parquet").equals(pd.read_parquet(tmp_path / "b" / "index.parquet"))


def test_user_mistakes_are_one_line_exit_2(setup, tmp_path, capsys):
    manifest, vae_path, _ = setup
    (tmp_path / "file").write_text("x")
    base = ["--config", str(REPO / "trainer/configs/tiny.yaml"), "--data", str(manifest),
            f"train.output_dir={tmp_path / 'run'}"]
    for extra, message in ((["-o", str(tmp_path / "file")], "is not a folder"),
                           (["-o", str(tmp_path / "o"), "vae.kind=sd-vae", f"vae.path={vae_path}",
                             "data.buckets=[[4,17,16]]"], "divisible by 2"),
                           (["-o", str(tmp_path / "o"), "vae.kind=wan", "vae.path=/nonexistent/wan"],
                            "cannot load model from folder")):
        with pytest.raises(SystemExit) as exit_:
            extract_main([*base, *extra])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "run").exists()  # checked before any work


@pytest.mark.slow
def test_training_runs_on_extracted_features(setup, tmp_path):
    manifest, vae_path, t5_path = setup
    vae, text = build_vae("sd-vae", path=vae_path), TextEncoder(t5_path, "t5", max_length=8)
    extract_features(open_dataset(manifest), [[4, 16, 16]], vae, text, tmp_path / "f", shard_clips=2)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer.train", "--config", str(REPO / "trainer/configs/tiny.yaml"),
           "--data", str(tmp_path / "f"), "--max-steps", "2", "--output-dir", str(out),
           "vae.kind=sd-vae", f"vae.path={vae_path}", "text.kind=t5", f"text.path={t5_path}",
           "text.max_length=8", "data.buckets=[[4,16,16]]", "data.batch_size=2", "model.patch_size=[1,2,2]"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "checkpoints" / "2" / "ema").is_dir()
