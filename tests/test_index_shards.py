"""build-shards: WebDataset read-back, frame accuracy, determinism, resume, bad rows, Open-Sora CSV, data card."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
import yaml

from index.shards.cli import shards_main
from index.manifest import read_failed, read_manifest
from index.shards.build import bucket_of, build_shards, parse_size, safe_key
from index.video import read_frames
from test_index_data import make_dataset, manifest_rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("shards-src"), shots=4, frames=20)


def _digests(folder) -> dict:
    """Shard -> its members in order: the json bytes, and for each mp4 its decoded frame count.

    (mp4 bytes are left out: libx264 output can differ by a few bytes between runs while the decoder
    runs threaded in the same process; see the index/shards.py docstring.)"""
    out = {}
    for p in sorted(Path(folder).glob("*.tar")):
        with tarfile.open(p) as tar:
            out[p.name] = [(m.name, m.mtime, m.uid, tar.extractfile(m).read() if m.name.endswith(".json")
                            else len(read_frames(tar.extractfile(m).read(), range(10)))) for m in tar.getmembers()]
    return out


def test_shards_read_back_with_webdataset_and_clips_are_frame_accurate(data, tmp_path):
    df = read_manifest(data["manifest"])
    rep = build_shards(df, tmp_path / "s", dedup=False, shard_size=parse_size("30KB"))
    assert rep.samples == df["clip_id"].nunique() == 8  # the bit-identical copy repeats clip ids: dropped once
    assert rep.dropped == {"repeated clip_id (identical content)": 4}
    urls = sorted(glob.glob(str(tmp_path / "s" / "*.tar")))
    assert len(urls) == len(rep.shards) > 1
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    index = pd.read_parquet(tmp_path / "s" / "index.parquet")
    assert sorted(s["__key__"] for s in samples) == sorted(index["clip_id"])
    by_id = df.drop_duplicates("clip_id").set_index("clip_id")
    src = read_frames(data["folder"] / "original.mp4", range(len(data["frames"])))  # the decoded source
    for s in samples:
        meta = s["json"]
        row = by_id.loc[s["__key__"]]
        assert meta["clip_id"] == s["__key__"] and meta["caption"] == row["caption"]
        assert meta["num_frames"] == row["num_frames"] and meta["bucket"] == bucket_of(96, 64, row["num_frames"])
        frames = read_frames(s["mp4"], range(int(row["num_frames"])))
        assert len(frames) == row["num_frames"]
        if "original" in row["video_path"]:  # same size as the source: frame k is source frame start + k
            a, n = int(row["start_frame"]), int(row["num_frames"])
            err = {d: np.mean([np.abs(frames[k].astype(int) - src[a + k + d].astype(int)).mean()
                               for k in range(2, n - 2) if 0 <= a + k + d < len(src)]) for d in (-2, -1, 0, 1, 2)}
            assert err[0] < 0.6 * min(err[d] for d in err if d)  # clearly the right frame, not a neighbour
    # every sample's shard is where the index says
    for shard, rows in index.groupby("shard"):
        with_keys = {s["__key__"] for s in wds.WebDataset(str(tmp_path / "s" / shard), shardshuffle=False)}
        assert with_keys == set(rows["clip_id"])


def test_same_inputs_give_identical_shards_and_a_rerun_resumes(data, tmp_path):
    df = read_manifest(data["manifest"])
    size = parse_size("30KB")
    build_shards(df, tmp_path / "a", dedup=False, shard_size=size)
    build_shards(df, tmp_path / "b", dedup=False, shard_size=size)
    first = _digests(tmp_path / "a")
    assert first == _digests(tmp_path / "b") and len(first) > 1
    # a kill while writing: one shard missing, a temp file left, the staging gone half-way
    victim = sorted(first)[0]
    (tmp_path / "a" / victim).unlink()
    (tmp_path / "a" / f".{victim}.tmp").write_bytes(b"partial")
    untouched = sorted(first)[-1]
    before = os.stat(tmp_path / "a" / untouched).st_mtime_ns
    rep = build_shards(df, tmp_path / "a", dedup=False, shard_size=size)
    assert _digests(tmp_path / "a") == first
    assert os.stat(tmp_path / "a" / untouched).st_mtime_ns == before  # finished shards are not rewritten
    assert rep.samples == 8 and not (tmp_path / "a" / ".staging").exists()
    # a larger shard size re-plans from the existing shards without the sources
    moved = tmp_path / "moved"
    shutil.copytree(data["folder"], moved)
    shutil.rmtree(data["folder"])
    try:
        rep2 = build_shards(df, tmp_path / "a", dedup=False, shard_size=parse_size("1GB"))
        assert rep2.samples == 8 and not rep2.failures
        assert len(list((tmp_path / "a").glob("*.tar"))) == 2  # one shard per bucket (20 and 14 frames)
        samples = list(wds.WebDataset(sorted(glob.glob(str(tmp_path / "a" / "*.tar"))), shardshuffle=False))
        assert sorted(s["__key__"] for s in samples) == sorted(df["clip_id"].unique())
    finally:
        shutil.copytree(moved, data["folder"])


def test_a_rerun_with_new_captions_rewrites_the_shards_metadata(data, tmp_path):
    df = read_manifest(data["manifest"])
    build_shards(df, tmp_path / "s", dedup=False)
    df["caption"] = [f"recaptioned {k}" for k in range(len(df))]
    build_shards(df, tmp_path / "s", dedup=False)
    samples = list(wds.WebDataset(sorted(glob.glob(str(tmp_path / "s" / "*.tar"))), shardshuffle=False))
    in_tars = {s["__key__"]: json.loads(s["json"])["caption"] for s in samples}
    first = df.drop_duplicates("clip_id")  # one sample per clip id: the first row's
    assert in_tars == dict(zip(first["clip_id"], first["caption"]))


def test_nothing_left_to_shard_is_a_clean_outcome(data, tmp_path):
    df = read_manifest(data["manifest"]).assign(caption=None)
    rep = build_shards(df, tmp_path / "s", dedup=False)
    assert rep.samples == 0 and len(read_failed(tmp_path / "s")) == len(df)
    assert not list((tmp_path / "s").glob("*.tar")) and (tmp_path / "s" / "index.parquet").exists()


def test_bad_rows_are_recorded_and_the_rest_goes_on(data, tmp_path):
    src = tmp_path / "changed.mp4"
    shutil.copy(data["folder"] / "original.mp4", src)
    rows = manifest_rows(src, [(0, 5)], ["changed later"])  # (copies: distinct ranges keep clip ids distinct)
    with open(src, "ab") as f:
        f.write(b"\0" * 16)  # the file changes after splitting
    gone = tmp_path / "gone.mp4"
    shutil.copy(data["folder"] / "original.mp4", gone)
    rows += manifest_rows(gone, [(5, 10)], ["a deleted video"])
    gone.unlink()
    rows += manifest_rows(data["folder"] / "original.mp4", [(10, 20), (20, 30)], ["", "fine"])
    rows += manifest_rows(data["folder"] / "original.mp4", [(70, 500)], ["past the end"])
    df = pd.DataFrame(rows)
    rep = build_shards(df, tmp_path / "out", dedup=False, shard_size=10**6)
    assert rep.samples == 1
    reasons = sorted(f["reason"].split(": ", 1)[1] for f in read_failed(tmp_path / "out"))
    assert reasons[0].startswith("clip range") and reasons[1:] == [
        "no caption", "video changed since splitting (sha256 mismatch)", "video missing"]


def test_member_names_are_safe_whatever_the_names():
    assert safe_key("0123abcd") == "0123abcd"
    for bad in ("../../etc/passwd", "clip.with.dots", "naïve clip ☃", "a" * 300, ""):
        key = safe_key(bad)
        assert key and len(key) <= 100 and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    assert safe_key("clip.with.dots") != safe_key("clip_with_dots")


def test_buckets_and_sizes():
    assert bucket_of(1920, 1080, 100) == "1080p_16x9_f065-128"
    assert bucket_of(1080, 1920, 16) == "1080p_9x16_f001-016"
    assert bucket_of(640, 480, 1000) == "480p_4x3_f513+"
    assert parse_size("1GB") == 10**9 and parse_size("64KiB") == 64000 and parse_size("500mb") == 5 * 10**8
    with pytest.raises(ValueError):
        parse_size("lots")


def test_cli_with_index_opensora_csv_and_data_card(data, tmp_path):
    from index.dedup.cli import index_main

    assert index_main([str(data["manifest"]), "-o", str(tmp_path / "idx")]) == 0
    out = tmp_path / "shards"
    assert shards_main([str(data["manifest"]), "-o", str(out), "--index", str(tmp_path / "idx"),
                        "--shard-size", "1MB", "--name", "tiny test set"]) == 0
    index = pd.read_parquet(out / "index.parquet")
    assert len(index) == data["shots"]  # copies and resized trims dropped as duplicates
    card = (out / "DATA_CARD.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["pretty_name"] == "tiny test set" and "text-to-video" in front["task_categories"]
    assert f"| clips | {data['shots']} |" in card and "near or exact duplicate" in card
    assert "all-MiniLM-L6-v2" in card and "$" not in card.split("```")[0]
    for png in ("duration", "resolution", "caption_length", "words", "similarity"):
        assert (out / "card" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    csv_out = tmp_path / "csv"
    assert shards_main([str(data["manifest"]), "-o", str(csv_out), "--no-dedup", "--format", "opensora-csv"]) == 0
    csv = pd.read_csv(csv_out / "opensora.csv")
    assert list(csv.columns) == ["path", "text", "num_frames", "height", "width", "aspect_ratio", "fps",
                                 "resolution"]
    assert len(csv) == 8 and all(Path(p).exists() for p in csv["path"])
    assert (csv["resolution"] == csv["height"] * csv["width"]).all()
    assert len(read_frames(csv["path"][0], range(int(csv["num_frames"][0])))) == csv["num_frames"][0]
    on_disk = sum(f.stat().st_size for f in [csv_out / "opensora.csv", *(csv_out / "clips").glob("*")])
    assert f"| size on disk | {on_disk / 1e6:.1f} MB |" in (csv_out / "DATA_CARD.md").read_text()


def test_malformed_manifest_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    assert shards_main([str(bad), "-o", str(tmp_path / "o")]) == 2
    missing_cols = tmp_path / "cols.parquet"
    pd.DataFrame({"clip_id": ["x"]}).to_parquet(missing_cols)
    assert shards_main([str(missing_cols), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot read manifest" in err and "missing columns" in err


def test_tar_headers_are_the_standard_ustar_bytes():
    from index.shards.build import _ustar_header

    info = tarfile.TarInfo("0123abcd.json")
    info.size, info.mtime, info.mode, info.uname, info.gname = 1234, 0, 0o644, "", ""
    assert _ustar_header("0123abcd.json", 1234) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    with pytest.raises(ValueError):
        _ustar_header("x" * 101, 1)


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
