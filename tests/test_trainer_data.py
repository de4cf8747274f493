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


def test_a_corrupt_clip_is_skipped_not_fatal(tmp_path):
    from index.manifest import read_manifest, write_manifest

    src = make_square_manifest(tmp_path / "d", count=3, frames=4, size=16)
    df = read_manifest(src)
    (tmp_path / "d" / df.loc[1, "video_path"]).write_bytes(b"not a video at all")
    write_manifest(df, tmp_path / "d" / "clips.parquet")
    ds = open_dataset(tmp_path / "d" / "clips.parquet")
    with pytest.warns(UserWarning, match="skipping clip"):
        sample = ds[(1, (4, 16, 16))]
    assert sample["clip_id"] == df.loc[2, "clip_id"] and 1 in ds.failed


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
