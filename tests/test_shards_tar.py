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
