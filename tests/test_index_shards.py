"""build-shards (webdataset): read-back, frame accuracy, determinism, resume, bad rows, names, the CLI and card."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from index.manifest import read_failed, read_manifest
from index.shards.build import build_shards
from index.shards.cli import shards_main
from index.shards.names import aspect_name, bucket_of, parse_size, resolution_name, safe_key
from index.video import read_frames
from test_shards_data import assert_same_tars, make_shards_dataset, manifest_rows, tar_digest


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_shards_dataset(tmp_path_factory.mktemp("shards-src"), shots=4, frames=20)


def _tar_bytes(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).glob("*.tar"))}


def test_shards_read_back_with_webdataset_and_clips_are_frame_accurate(data, tmp_path):
    df = read_manifest(data["manifest"])
    rep = build_shards(df, tmp_path / "s", dedup=False, shard_size=parse_size("30KB"))
    assert rep.samples == len(df) == data["rows"] and not rep.failures
    urls = sorted(glob.glob(str(tmp_path / "s" / "*.tar")))
    assert len(urls) == len(rep.shards) > 2
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    index = pd.read_parquet(tmp_path / "s" / "index.parquet")
    assert sorted(s["__key__"] for s in samples) == sorted(index["clip_id"]) == sorted(df["clip_id"])
    by_id = df.set_index("clip_id")
    src = read_frames(data["folder"] / "original.mp4", range(len(data["frames"])))  # the decoded source
    for s in samples:
        meta, row = s["json"], by_id.loc[s["__key__"]]
        assert meta["clip_id"] == s["__key__"] and meta["caption"] == row["caption"]
        assert meta["num_frames"] == row["num_frames"]
        assert meta["bucket"] == bucket_of(row["width"], row["height"], row["num_frames"])
        frames = read_frames(s["mp4"], range(int(row["num_frames"])))
        assert len(frames) == row["num_frames"]
        if row["video_path"].endswith("original.mp4"):  # frame k is source frame start + k, not a neighbour
            a, n = int(row["start_frame"]), int(row["num_frames"])
            err = {d: np.mean([np.abs(frames[k].astype(int) - src[a + k + d].astype(int)).mean()
                               for k in range(2, n - 2) if 0 <= a + k + d < len(src)]) for d in (-2, -1, 0, 1, 2)}
            assert err[0] < 0.6 * min(err[d] for d in err if d)
    for shard, rows in index.groupby("shard"):  # every sample's shard is where the index says
        keys = {s["__key__"] for s in wds.WebDataset(str(tmp_path / "s" / shard), shardshuffle=False)}
        assert keys == set(rows["clip_id"])


def test_same_inputs_give_identical_shards_and_a_rerun_resumes(data, tmp_path):
    df = read_manifest(data["manifest"])
    size = parse_size("30KB")
    build_shards(df, tmp_path / "a", dedup=False, shard_size=size)
    build_shards(df, tmp_path / "b", dedup=False, shard_size=size)
    first = _tar_bytes(tmp_path / "a")
    assert len(first) > 2
    assert_same_tars(tar_digest(tmp_path / "a"), tar_digest(tmp_path / "b"))
    # a kill while writing: one shard missing, our temp file left
    victim, untouched = sorted(first)[0], sorted(first)[-1]
    (tmp_path / "a" / victim).unlink()
    temp = tmp_path / "a" / f".{victim}.shotcap-123-0123abcd.tmp"
    temp.write_bytes(b"partial")
    before = os.stat(tmp_path / "a" / untouched).st_mtime_ns
    rep = build_shards(df, tmp_path / "a", dedup=False, shard_size=size)
    assert _tar_bytes(tmp_path / "a") == first and not temp.exists()
    assert os.stat(tmp_path / "a" / untouched).st_mtime_ns == before  # finished shards are not rewritten
    assert rep.samples == len(df) and not (tmp_path / "a" / ".staging").exists()
    # a larger shard size re-plans from the existing shards, without the sources
    moved = tmp_path / "moved"
    shutil.copytree(data["folder"], moved)
    shutil.rmtree(data["folder"])
    try:
        rep2 = build_shards(df, tmp_path / "a", dedup=False, shard_size=parse_size("1GB"))
        assert rep2.samples == len(df) and not rep2.failures
        assert sorted(p.name for p in (tmp_path / "a").glob("*.tar")) == sorted(set(rep2.index["shard"]))
        assert len(rep2.shards) == len(set(rep2.index["bucket"])) == 3  # one shard per bucket now
        samples = list(wds.WebDataset(sorted(glob.glob(str(tmp_path / "a" / "*.tar"))), shardshuffle=False))
        assert sorted(s["__key__"] for s in samples) == sorted(df["clip_id"])
    finally:
        shutil.copytree(moved, data["folder"])


def test_a_rerun_with_new_captions_rewrites_the_shards_metadata(data, tmp_path):
    df = read_manifest(data["manifest"])
    build_shards(df, tmp_path / "s", dedup=False)
    df["caption"] = [f"recaptioned {k}" for k in range(len(df))]
    build_shards(df, tmp_path / "s", dedup=False)
    samples = list(wds.WebDataset(sorted(glob.glob(str(tmp_path / "s" / "*.tar"))), shardshuffle=False))
    assert {s["__key__"]: json.loads(s["json"])["caption"] for s in samples} == dict(zip(df["clip_id"], df["caption"]))


def test_nothing_left_to_shard_is_a_clean_outcome(data, tmp_path):
    df = read_manifest(data["manifest"]).assign(caption=None)
    rep = build_shards(df, tmp_path / "s", dedup=False)
    assert rep.samples == 0 and len(read_failed(tmp_path / "s")) == len(df)
    assert not list((tmp_path / "s").glob("*.tar")) and (tmp_path / "s" / "index.parquet").exists()


def test_bad_rows_are_recorded_and_the_rest_goes_on(data, tmp_path):
    src = tmp_path / "changed.mp4"
    shutil.copy(data["folder"] / "original.mp4", src)
    rows = manifest_rows(src, [(0, 5)], ["changed later"])
    with open(src, "ab") as f:
        f.write(b"\0" * 16)  # the file changes after splitting
    gone = tmp_path / "gone.mp4"
    shutil.copy(data["folder"] / "original.mp4", gone)
    with open(gone, "ab") as f:
        f.write(b"gone")
    rows += manifest_rows(gone, [(5, 10)], ["a deleted video"])
    gone.unlink()
    rows += manifest_rows(data["folder"] / "original.mp4", [(10, 20), (20, 30)], ["", "fine"])
    rows += manifest_rows(data["folder"] / "original.mp4", [(70, 500)], ["past the end"])
    bad_range = manifest_rows(data["folder"] / "original.mp4", [(30, 40)], ["negative start"])[0]
    rows.append({**bad_range, "start_frame": -5, "num_frames": 45})
    rep = build_shards(pd.DataFrame(rows), tmp_path / "out", dedup=False, shard_size=10**6)
    assert rep.samples == 1 and rep.dropped == {"failed": 5}
    reasons = sorted(f["reason"] for f in read_failed(tmp_path / "out"))
    assert any("start_frame is -5" in r for r in reasons)
    assert any(r.endswith("no caption") for r in reasons)
    assert any("lies beyond the 80 decodable frames" in r for r in reasons)
    assert any(r.endswith("video changed since it was split (sha256 mismatch)") for r in reasons)
    assert any(r.endswith("video missing") for r in reasons)


def test_member_names_are_safe_whatever_the_names():
    assert safe_key("0123abcd") == "0123abcd"
    for bad in ("../../etc/passwd", "clip.with.dots", "naïve clip ☃", "a" * 300, ""):
        key = safe_key(bad)
        assert key and len(key) <= 100 and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    assert safe_key("clip.with.dots") != safe_key("clip_with_dots")


def test_names_use_one_aspect_convention_and_never_overstate_resolution():
    assert bucket_of(1920, 1080, 100) == "1080p_16x9_f065-128"
    assert bucket_of(1080, 1920, 16) == "1080p_9x16_f001-016"
    assert bucket_of(640, 480, 1000) == "480p_4x3_f513+"
    assert bucket_of(2560, 1080, 50) == "1080p_21x9_f033-064"
    # 528-, 544- and 576-line clips are not "720p": the largest standard their short side reaches
    assert [resolution_name(w, h) for w, h in ((704, 528), (960, 544), (1024, 576), (1280, 720), (96, 64))] == [
        "480p", "480p", "576p", "720p", "under144p"]
    # w:h names, the same in buckets (with x) and on the card; aspect_ratio stays height / width
    assert [aspect_name(w, h) for w, h in ((1920, 1080), (1080, 1920), (704, 528), (1920, 816), (660, 484))] == [
        "16:9", "9:16", "4:3", "21:9", "4:3"]  # 660x484 is 15:11 reduced: named by the nearest standard
    assert parse_size("1GB") == 10**9 and parse_size("64KiB") == 64000 and parse_size("500mb") == 5 * 10**8
    with pytest.raises(ValueError):
        parse_size("lots")


def test_cli_with_an_index_and_the_data_card(data, tmp_path, capsys):
    from huggingface_hub import DatasetCard

    from index.dedup.cli import index_main

    assert index_main([str(data["manifest"]), "-o", str(tmp_path / "idx")]) == 0
    out = tmp_path / "shards"
    assert shards_main([str(data["manifest"]), "-o", str(out), "--index", str(tmp_path / "idx"),
                        "--shard-size", "1MB", "--name", "tiny test set"]) == 0
    index = pd.read_parquet(out / "index.parquet")
    assert len(index) == data["shots"] + 2  # one clip per duplicate group (original, copy, resize) + 2 others
    err = capsys.readouterr().err
    assert f"dropped: {data['shots']} exact copy, {data['shots']} near duplicate" in err
    card = DatasetCard.load(out / "DATA_CARD.md")
    assert card.data.pretty_name == "tiny test set" and card.data.task_categories == ["text-to-video"]
    assert card.data.configs[0]["data_files"][0]["path"] == ["*.tar"] and card.data.size_categories == ["n<1K"]
    assert f"| clips | {len(index)} |" in card.text and "| shards | 2 |" in card.text
    assert "| exact copy | identical frames (frame hash) | 4 |" in card.text
    assert "all-MiniLM-L6-v2" in card.text and "$" not in card.text.split("```")[0]
    for png in ("duration", "resolution", "caption_length", "words", "similarity"):
        assert (out / "card" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_malformed_manifest_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    assert shards_main([str(bad), "-o", str(tmp_path / "o")]) == 2
    missing_cols = tmp_path / "cols.parquet"
    pd.DataFrame({"clip_id": ["x"]}).to_parquet(missing_cols)
    assert shards_main([str(missing_cols), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot read manifest" in err and "missing columns" in err and not (tmp_path / "o").exists()


def test_help_shows_defaults_and_every_option_has_help(capsys):
    with pytest.raises(SystemExit):
        shards_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: webdataset)" in text and "(default: 1GB)" in text
    from index.shards.cli import parser

    assert all(a.help for a in parser()._actions)


def test_real_footage_clips_start_on_their_first_frame(realdata, tmp_path):
    cuts = json.loads((realdata / "cuts.json").read_text())
    rows = []
    for name in ("bikes.mp4", "cityCC0.mpg"):
        fps = 25.0
        bounds = [0] + [round(t * fps) for t in cuts[name]["hard"]] + [cuts[name]["frames"]]
        shots = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= 10]
        rows += manifest_rows(realdata / name, shots, [f"{name} shot {k}" for k in range(len(shots))])
    df = pd.DataFrame(rows)
    rep = build_shards(df, tmp_path / "s", dedup=False, shard_size=parse_size("1GB"))
    assert rep.samples == len(df) and not rep.failures
    sources = {name: read_frames(realdata / name, range(cuts[name]["frames"]), size=(160, 90))
               for name in ("bikes.mp4", "cityCC0.mpg")}
    for s in wds.WebDataset(sorted(glob.glob(str(tmp_path / "s" / "*.tar"))), shardshuffle=False).decode():
        meta = s["json"]
        frames = read_frames(s["mp4"], range(meta["num_frames"]), size=(160, 90))
        src = sources[Path(meta["video_path"]).name]
        a = meta["start_frame"]
        assert len(frames) == meta["num_frames"] == meta["end_frame"] - a
        err = {d: np.abs(frames[[0, -1]].astype(int) - src[[a + d, a + d + meta["num_frames"] - 1]].astype(int)).mean()
               for d in (-1, 0, 1) if 0 <= a + d and a + d + meta["num_frames"] <= len(src)}
        assert min(err, key=err.get) == 0  # first and last frames are the shot's, not a neighbour's
