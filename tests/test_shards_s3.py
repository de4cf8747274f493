"""build-shards on a bucket (the test S3-API server): a manifest read from s3:// and shards written to s3://
give the bytes, index and card of the same build on local folders; a re-run on the bucket rewrites nothing."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq

from index import storage
from index.shards.cli import shards_main
from test_shards_data import make_shards_dataset, scores  # noqa: F401  (scores: a fixture)

ARGS = ["--no-dedup", "--shard-size", "30KB", "--where", "aesthetic >= 4 or motion > 1", "--keep-top", "motion:0.9"]


def _objects(folder) -> dict:
    """{relative name: bytes} of every file under `folder` (a local folder or a URL), state and locks aside."""
    out = {}
    for loc, _ in storage.walk_files(folder):
        rel = str(loc)[len(str(folder)):].lstrip("/")
        out[rel] = storage.read_bytes(loc)
    return out


def test_a_build_from_a_bucket_to_a_bucket_equals_the_local_build(s3, tmp_path, scores):  # noqa: F811
    data = make_shards_dataset(tmp_path / "src", shots=2, frames=12, with_scores=True)
    manifest = f"{s3}/in/manifest.parquet"
    storage.write_bytes(manifest, data["manifest"].read_bytes())
    local, remote = tmp_path / "out", f"{s3}/out"
    assert shards_main([str(data["manifest"]), "-o", str(local), *ARGS]) == 0
    assert shards_main([manifest, "-o", remote, *ARGS]) == 0

    mine, theirs = _objects(local), _objects(remote)
    assert sorted(mine) == sorted(theirs) and any(n.endswith(".tar") for n in mine)
    for name in mine:
        if name.endswith(".tar") or name in ("failed.jsonl", "DATA_CARD.md") or name.startswith("card/"):
            assert mine[name] == theirs[name], name
    with storage.open_read(f"{remote}/index.parquet") as f:
        got = pq.read_table(f).to_pandas()
    want = pd.read_parquet(local / "index.parquet")
    assert 0 < len(want) < data["rows"]  # the filters dropped some
    pd.testing.assert_frame_equal(got, want)

    fs, path = storage.fs_path(storage.location(remote))
    before = {p: fs.info(p)["ETag"] for p in fs.find(path)}
    assert shards_main([manifest, "-o", remote, *ARGS]) == 0  # resumes: the shards are intact, nothing is cut
    fs.invalidate_cache()
    after = {p: fs.info(p)["ETag"] for p in fs.find(path)}
    assert {p: e for p, e in after.items() if p.endswith(".tar")} == {p: e for p, e in before.items()
                                                                      if p.endswith(".tar")}
    assert not any("/.staging/" in p for p in after)
