"""Training data: bucket sampler on tiny datasets, frame sampling, manifest and WebDataset shard reading."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from trainer.data import BucketSampler, ManifestDataset, ShardDataset, collate, frame_indices, open_dataset
from trainer.testing import make_square_manifest, square_frames


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    return make_square_manifest(tmp_path_factory.mktemp("squares"), count=10, frames=8, size=32)


def test_ten_clips_still_yield_full_batches():
    shapes = [(8, 32, 32)] * 6 + [(8, 32, 48)] * 3 + [(3, 48, 32)]
    sampler = BucketSampler(shapes, [[8, 32, 32], [8, 32, 48], [8, 48, 32], [4, 48, 32]], batch_size=8)
    batches = list(sampler)
    assert len(batches) == 3  # one per non-empty bucket although every bucket is smaller than the batch
    for batch in batches:
        assert len(batch) == 8 and len({b for _, b in batch}) == 1
    assert {b for batch in batches for _, b in batch} == {(8, 32, 32), (8, 32, 48), (4, 48, 32)}
    assert sorted({i for batch in batches for i, _ in batch}) == list(range(10))  # every clip is used


def test_processes_get_disjoint_equal_shares_and_resume_skips():
    shapes = [(16, 64, 64)] * 10
    a = list(BucketSampler(shapes, [[16, 64, 64]], 2, rank=0, world_size=2, seed=1))
    b = list(BucketSampler(shapes, [[16, 64, 64]], 2, rank=1, world_size=2, seed=1))
    assert len(a) == len(b) > 0
    assert not {i for x in a for i, _ in x} & {i for x in b for i, _ in x}
    s = BucketSampler(shapes, [[16, 64, 64]], 2, seed=1)
    full = list(s)
    s.set_epoch(0, start=3)
    assert list(s) == full[3:]
    s.set_epoch(1)
    assert list(s) != full  # a new order each epoch


def test_frame_indices():
    assert frame_indices(100, 4, 3, None) == [45, 48, 51, 54]  # centred window when not random
    rng = np.random.default_rng(0)
    idx = frame_indices(100, 4, 3, rng)
    assert np.all(np.diff(idx) == 3) and 0 <= idx[0] and idx[-1] < 100
    assert frame_indices(3, 5, 2, None) == [0, 0, 1, 2, 2]  # short clip: spread, repeating frames


def test_manifest_dataset_reads_bucket_sized_clips(squares):
    ds = open_dataset(squares)
    assert isinstance(ds, ManifestDataset) and len(ds) == 10
    sample = ds[(0, (4, 16, 24))]
    assert sample["video"].shape == (3, 4, 16, 24) and sample["video"].dtype == torch.float32
    assert -1.0 <= sample["video"].min() < -0.8 and sample["video"].max() <= 1.0
    assert sample["caption"] == "a red square moving left"
    batch = collate([ds[(i, (8, 32, 32))] for i in range(3)])
    assert batch["video"].shape == (3, 3, 8, 32, 32) and len(batch["caption"]) == 3
    # the frames are the clip's frames: the red square moves left
    red = (batch["video"][0, 0] > 0.3) & (batch["video"][0, 1] < -0.3)  # (T, H, W)
    xs = [np.nonzero(m.any(0).numpy())[0].mean() for m in red]
    assert xs[0] > xs[-1] + 10


def test_uncaptioned_manifest_is_a_clear_error(tmp_path, squares):
    from index.manifest import read_manifest, write_manifest

    df = read_manifest(squares).drop(columns=["caption"])
    write_manifest(df, tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="no 'caption' column"):
        open_dataset(tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="neither a shards folder nor a manifest"):
        open_dataset(tmp_path / "nothing")


def test_shard_dataset_reads_webdataset_tars(tmp_path, squares):
    import webdataset as wds

    from index.manifest import read_manifest
    from index.video import write_video

    rows = read_manifest(squares).head(4)
    out = tmp_path / "shards"
    out.mkdir()
    index = []
    with wds.TarWriter(str(out / "shard-000000.tar")) as sink:
        for _, row in rows.iterrows():
            video = square_frames("green", "down", 8, 32, 8)
            sink.write({"__key__": row["clip_id"], "mp4": write_video(None, video, 8),
                        "json": json.dumps({**row.to_dict(), "caption": "a green square moving down"}).encode()})
            index.append({**row.to_dict(), "caption": "a green square moving down", "shard": "shard-000000.tar"})
    pd.DataFrame(index).to_parquet(out / "index.parquet")
    for with_index in (True, False):
        if not with_index:
            (out / "index.parquet").unlink()
        ds = open_dataset(out)
        assert isinstance(ds, ShardDataset) and len(ds) == 4
        sample = ds[(2, (8, 32, 32))]
        assert sample["caption"] == "a green square moving down"
        green = (sample["video"][1] > 0.3) & (sample["video"][0] < -0.3)  # (T, H, W)
        ys = [np.nonzero(m.any(1).numpy())[0].mean() for m in green]
        assert ys[-1] > ys[0] + 10  # moving down


def _corrupt_one(tmp_path, count=6, bad=2):
    from index.manifest import read_manifest, write_manifest

    src = make_square_manifest(tmp_path / "d", count=count, frames=4, size=16)
    df = read_manifest(src)
    (tmp_path / "d" / df.loc[bad, "video_path"]).write_bytes(b"not a video at all")
    write_manifest(df, tmp_path / "d" / "clips.parquet")
    return df, open_dataset(tmp_path / "d" / "clips.parquet")


def test_a_corrupt_clip_is_a_failure_never_replaced_by_another(tmp_path):
    df, ds = _corrupt_one(tmp_path)
    bad = df.loc[2, "clip_id"]
    marker = ds[(2, (4, 16, 16))]
    assert marker["failed"] == bad and "video" not in marker and "\n" not in marker["reason"]
    assert ds[(3, (4, 16, 16))]["clip_id"] == df.loc[3, "clip_id"]  # the others are themselves
    batch = collate([ds[(i, (4, 16, 16))] for i in (1, 2, 3)])
    assert batch["clip_id"] == [df.loc[1, "clip_id"], df.loc[3, "clip_id"]] and batch["video"].shape[0] == 2
    assert list(batch["failed"]) == [bad]
    empty = collate([ds[(2, (4, 16, 16))]])  # a batch of failed clips only: nothing to train on
    assert empty["clip_id"] == [] and "video" not in empty and list(empty["failed"]) == [bad]


def test_a_bug_while_reading_a_clip_is_not_a_failure(squares):
    ds = open_dataset(squares)
    ds.rows = ds.rows.drop(columns=["start_frame"])  # our mistake, not the input's: the run must stop
    with pytest.raises(KeyError):
        ds[(0, (4, 16, 16))]
    assert ds.failures == {}


def test_failures_in_loader_workers_are_counted_in_the_main_process(tmp_path):
    df, ds = _corrupt_one(tmp_path)
    bad = df.loc[2, "clip_id"]
    sampler = BucketSampler(ds.shapes(), [[4, 16, 16]], batch_size=4, shuffle=False)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    seen, new = [], {}
    for planned, batch in zip(sampler.batches(0), loader):
        # each batch holds exactly its planned clips less the failed one, each with its own caption
        assert batch["clip_id"] == [df.loc[i, "clip_id"] for i, _ in planned if i != 2]
        assert batch["caption"] == [df.loc[i, "caption"] for i, _ in planned if i != 2]
        assert len(batch["clip_id"]) + sum(i == 2 for i, _ in planned) == 4
        new.update(ds.note_failures(batch))
        seen += batch["clip_id"]
    assert list(new) == [bad] and list(ds.failures) == [bad]  # in this process, although workers decoded
    assert bad not in seen and set(seen) == set(df["clip_id"]) - {bad}
    assert ds.note_failures({"failed": {bad: "again"}}) == {}  # reported once


def _tar_with_index(out, rows, with_offsets: bool):
    """A WebDataset tar of the rows' clips (each a green square moving down) and its index.parquet."""
    import tarfile

    import webdataset as wds

    from index.video import write_video

    out.mkdir()
    with wds.TarWriter(str(out / "shard-000000.tar")) as sink:
        for _, row in rows.iterrows():
            sink.write({"__key__": row["clip_id"], "mp4": write_video(None, square_frames("green", "down"), 8),
                        "json": json.dumps({**row.to_dict(), "caption": "a green square moving down"}).encode()})
    index = rows.assign(caption="a green square moving down", key=rows["clip_id"], shard="shard-000000.tar")
    with tarfile.open(out / "shard-000000.tar") as tf:
        where = {m.name[:-4]: (m.offset, m.offset_data, m.size) for m in tf.getmembers() if m.name.endswith(".mp4")}
    if with_offsets:
        index = index.assign(offset=[where[k][1] for k in index["key"]], size=[where[k][2] for k in index["key"]])
    index.to_parquet(out / "index.parquet")
    return where


def _moves_down(sample) -> bool:
    green = (sample["video"][1] > 0.3) & (sample["video"][0] < -0.3)  # (T, H, W)
    ys = [np.nonzero(m.any(1).numpy())[0].mean() for m in green]
    return ys[-1] > ys[0] + 10


def test_shard_dataset_seeks_by_the_offsets_in_index_parquet(tmp_path, squares):
    from index.manifest import read_manifest

    rows = read_manifest(squares).head(3)
    where = _tar_with_index(tmp_path / "shards", rows, with_offsets=True)
    with open(tmp_path / "shards" / "shard-000000.tar", "r+b") as f:  # no tar header can be read any more:
        for header, _, _ in where.values():  # only the recorded offsets lead to the samples
            f.seek(header)
            f.write(b"\xff" * 512)
    ds = open_dataset(tmp_path / "shards")
    assert isinstance(ds, ShardDataset) and len(ds) == 3
    sample = ds[(1, (8, 32, 32))]
    assert sample["clip_id"] == rows.iloc[1]["clip_id"] and _moves_down(sample)


def test_shard_dataset_scans_old_shards_without_offsets(tmp_path, squares):
    from index.manifest import read_manifest

    rows = read_manifest(squares).head(3)
    _tar_with_index(tmp_path / "shards", rows, with_offsets=False)
    ds = open_dataset(tmp_path / "shards")
    assert len(ds) == 3 and _moves_down(ds[(2, (8, 32, 32))])
    (tmp_path / "shards" / "shard-000000.tar").write_bytes(b"")  # a shard gone bad after opening: a failure
    failed = ds[(0, (8, 32, 32))]
    assert failed["failed"] == rows.iloc[0]["clip_id"] and "ends before" in failed["reason"]


def test_reads_the_shards_that_build_shards_writes(tmp_path, squares):
    from index.manifest import read_manifest
    from index.shards.build import build_shards

    df = read_manifest(squares)
    df["video_path"] = [str(squares.parent / p) for p in df["video_path"]]
    build_shards(df, tmp_path / "shards", dedup=False)
    ds = open_dataset(tmp_path / "shards")
    assert isinstance(ds, ShardDataset) and len(ds) == len(df)
    i = int(np.flatnonzero(ds.rows["caption"] == "a blue square moving right")[0])
    sample = ds[(i, (8, 32, 32))]
    blue = (sample["video"][2] > 0.3) & (sample["video"][0] < -0.3)  # (T, H, W)
    xs = [np.nonzero(m.any(0).numpy())[0].mean() for m in blue]
    assert xs[-1] > xs[0] + 10  # moving right: the shard holds the clip's own frames


@pytest.mark.parametrize("clips,batch,world", [(3, 4, 2), (3, 4, 4), (5, 2, 4)])
def test_fewer_batches_than_processes_still_gives_each_process_one(clips, batch, world):
    shapes = [(16, 64, 64)] * clips
    per = [list(BucketSampler(shapes, [(8, 64, 64)], batch, rank=r, world_size=world)) for r in range(world)]
    assert all(len(p) == len(per[0]) >= 1 for p in per)
    assert {i for p in per for b in p for i, _ in b} == set(range(clips))
