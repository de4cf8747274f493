"""Shard tars: the bytes of `write_shard` (golden), member offsets for seeking, hostile tars in the output folder."""

from __future__ import annotations

import hashlib
import tarfile

from index.shards.formats.webdataset import write_shard

# sha256 of the tar below as written by the hand-made ustar writer that build-shards used before it wrote
# through webdataset.TarWriter (computed with that writer, then frozen here): the new writer must give the
# same bytes, so shards written before and after the change are interchangeable and re-runs rewrite nothing.
GOLDEN_SHA256 = "84de922d70eb90c8b0c6d655e4be6a166d3d8e690863e66a78d81f4c25e1429b"


def golden_samples(folder):
    samples = []
    for key, n in (("clipA", 1000), ("clip_b-2", 3000), ("c3", 512)):
        mp4 = folder / f"{key}.mp4"
        mp4.write_bytes(bytes((i * 7 + n) % 251 for i in range(n)))
        row = {"clip_id": key, "caption": f"a caption for {key} – ünïcode", "num_frames": n // 100, "score": 0.5}
        samples.append((key, row, mp4))
    return samples


def test_shard_bytes_equal_the_golden_tar(tmp_path):
    write_shard(tmp_path / "g.tar", golden_samples(tmp_path))
    assert hashlib.sha256((tmp_path / "g.tar").read_bytes()).hexdigest() == GOLDEN_SHA256
    with tarfile.open(tmp_path / "g.tar") as tar:
        names = [m.name for m in tar.getmembers()]
    assert names == ["clipA.mp4", "clipA.json", "clip_b-2.mp4", "clip_b-2.json", "c3.mp4", "c3.json"]


# ---------------------------------------------------------------- the shards build-shards writes

import io  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from index.manifest import read_manifest  # noqa: E402
from index.shards.build import ShardsError, build_shards  # noqa: E402
from index.video import read_frames  # noqa: E402
from test_shards_data import make_shards_dataset  # noqa: E402


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    data = make_shards_dataset(tmp_path_factory.mktemp("tar-src"), shots=2, frames=16)
    return read_manifest(data["manifest"])


def test_index_offsets_point_at_each_clips_bytes(clips, tmp_path):
    rep = build_shards(clips, tmp_path / "s", dedup=False, shard_size=30_000)
    index = pd.read_parquet(tmp_path / "s" / "index.parquet")
    assert len(index) == len(clips) and {"shard", "offset", "size"} <= set(index.columns)
    for row in index.itertuples():
        with open(tmp_path / "s" / row.shard, "rb") as f:  # one seek, no tar headers read
            f.seek(row.offset)
            data = f.read(row.size)
        with tarfile.open(tmp_path / "s" / row.shard) as tar:
            assert data == tar.extractfile(f"{row.key}.mp4").read()
        assert len(read_frames(data, range(row.num_frames))) == row.num_frames
    # a re-run keeps the shards and reports the same offsets (read from the existing tars)
    again = build_shards(clips, tmp_path / "s", dedup=False, shard_size=30_000)
    pd.testing.assert_frame_equal(again.index, rep.index)


def test_a_shard_with_a_link_member_is_rewritten_not_followed(clips, tmp_path):
    out = tmp_path / "s"
    build_shards(clips, out, dedup=False, shard_size=30_000)
    shard = sorted(out.glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:  # the same member names, the clip now a link out of the folder
        for m, data in members:
            if m.name.endswith(".mp4"):
                link = tarfile.TarInfo(m.name)
                link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
                tar.addfile(link)
            else:
                tar.addfile(m, io.BytesIO(data))
    for _ in range(2):  # not once: every run
        rep = build_shards(clips, out, dedup=False, shard_size=30_000)
        assert rep.samples == len(clips) and not rep.failures
    with tarfile.open(shard) as tar:
        assert all(m.isfile() for m in tar.getmembers())
        mp4s = [m for m in tar.getmembers() if m.name.endswith(".mp4")]
        assert mp4s and all(len(read_frames(tar.extractfile(m).read(), range(8))) == 8 for m in mp4s)


def test_only_files_it_wrote_are_removed(clips, tmp_path):
    out = tmp_path / "s"
    (out / "card").mkdir(parents=True)
    (out / ".staging").mkdir()
    user = {out / "my_backup.tar": b"not a tar at all", out / "notes.tar": None, out / ".notes.tmp": b"mine",
            out / "card" / ".draft.tmp": b"mine", out / ".staging" / ".keep.tmp": b"mine",
            out / "sub" / ".x.shotcap-1-0123abcd.tmp": b"in a folder build-shards does not write"}
    for path, data in user.items():
        path.parent.mkdir(exist_ok=True)
        if data is None:
            with tarfile.open(path, "w") as tar:  # a readable tar that is not a shard of ours
                info = tarfile.TarInfo("photo.jpg")
                info.size = 3
                tar.addfile(info, io.BytesIO(b"jpg"))
        else:
            path.write_bytes(data)
    ours = out / ".staging" / ".abc.mp4.shotcap-99-0123abcd.tmp"  # a write of ours that a kill interrupted
    ours.write_bytes(b"partial")
    build_shards(clips, out, dedup=False, shard_size=30_000)
    first = sorted(p.name for p in out.glob("*.tar"))
    build_shards(clips, out, dedup=False, shard_size=10**9)  # re-plans: the earlier shards are stale
    assert all(p.exists() for p in user) and (out / "my_backup.tar").read_bytes() == b"not a tar at all"
    assert not ours.exists()
    now = sorted(p.name for p in out.glob("*.tar"))
    assert set(first) - set(now) and "my_backup.tar" in now and "notes.tar" in now  # stale shards of ours went
    with tarfile.open(out / "notes.tar") as tar:
        assert tar.getnames() == ["photo.jpg"]


def test_a_foreign_file_at_a_shard_name_is_never_overwritten(clips, tmp_path):
    out = tmp_path / "s"
    probe = build_shards(clips, tmp_path / "probe", dedup=False)  # learn the shard names of this plan
    out.mkdir()
    victim = out / probe.shards[0]
    victim.write_bytes(b"a user's file that happens to have this name")
    with pytest.raises(ShardsError, match="not written by build-shards"):
        build_shards(clips, out, dedup=False)
    assert victim.read_bytes() == b"a user's file that happens to have this name"
