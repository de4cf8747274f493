"""Sorting a manifest of any size in the memory of one piece: `index.query.Sorted` given to `batches` sorts in
pieces split by ranges of the first sort column, and gives exactly the rows of one sort."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from index import query


@pytest.fixture
def con():
    with query.connect() as c:
        yield c


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    paths = [f"s3://b/raw/{k:04d}.mp4" for k in rng.integers(0, n // 7, n)]  # ~7 clips per source, in any order
    return pa.table({"video_path": paths, "start_frame": rng.integers(0, 50, n), "clip_id": [f"c{i}" for i in range(n)],
                     "caption": [f"caption {i}" for i in range(n)], "_row": rng.permutation(n)})


@pytest.mark.parametrize("order", [["video_path", "start_frame", "clip_id"], ["_row"]])
def test_a_piecewise_sort_gives_the_rows_of_one_sort(con, order):
    query.arrow(con, "t", _table(5000, seed=len(order)))
    q = query.Sorted("SELECT * FROM t", order, drop=["_row"])
    whole = con.sql(str(q)).to_arrow_table()
    pieces = pa.Table.from_batches(list(query.sorted_batches(con, q, rows=333, piece_rows=400)))
    assert pieces.num_rows == 5000 and pieces.column_names == whole.column_names and "_row" not in pieces.column_names
    assert pieces.equals(whole)
    assert pieces.column("clip_id").to_pylist() != sorted(pieces.column("clip_id").to_pylist())  # really reordered


def test_batches_sorts_a_sorted_query_in_pieces_past_the_limit(con, monkeypatch):
    query.arrow(con, "t", _table(3000, seed=3))
    q = query.Sorted("SELECT * FROM t", ["video_path", "start_frame", "clip_id"])
    whole = con.sql(str(q)).to_arrow_table()
    monkeypatch.setattr(query, "SORT_ROWS", 250)
    made = []
    real = query.tempfile.mkdtemp
    monkeypatch.setattr(query.tempfile, "mkdtemp", lambda **kw: made.append(real(**kw)) or made[-1])
    assert pa.Table.from_batches(list(query.batches(con, q))).equals(whole)
    assert made and not any(query.os.path.exists(d) for d in made)  # the pieces were written, then removed
