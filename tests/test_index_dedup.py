"""Near-duplicate pairs (exact and partitioned), connected components, the keep rule, the FAISS index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from index.dedup import faiss_index
from index.engine import UsageError
from index.dedup.groups import (assign_groups, connected_components, near_duplicate_pairs,
                         nearest_neighbour_similarity)


def planted(n: int, dim: int, seed: int = 0, groups: int = 200):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim))
    x = centres[rng.integers(0, 50, n)] + rng.standard_normal((n, dim)) * 0.9
    rows = rng.permutation(n)[:groups * 3].reshape(groups, 3)
    for src, a, b in rows:
        for r in (a, b):
            x[r] = x[src] + rng.standard_normal(dim) * np.linalg.norm(x[src]) * rng.uniform(0.05, 0.25) / np.sqrt(dim)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), rows


def test_exact_pairs_match_a_plain_all_pairs_check():
    x, _ = planted(600, 16, groups=30)
    i, j, s, params = near_duplicate_pairs(x, 0.9, method="exact")
    sims = x @ x.T
    want = {(a, b) for a, b in zip(*np.nonzero(np.triu(sims >= 0.9, k=1)))}
    assert params.method == "exact"
    assert set(zip(i.tolist(), j.tolist())) == want
    assert (i < j).all()
    np.testing.assert_allclose(s, sims[i, j], rtol=1e-5)


def test_partitioned_join_finds_planted_duplicates_like_exact():
    x, rows = planted(30000, 48, groups=400)
    ei, ej, _, _ = near_duplicate_pairs(x, 0.9, method="exact")
    pi, pj, ps, params = near_duplicate_pairs(x, 0.9, method="partitioned")
    assert params.method == "partitioned" and params.nlist > 16 and params.probe == 4
    exact = set(zip(ei.tolist(), ej.tolist()))
    found = set(zip(pi.tolist(), pj.tolist()))
    assert len(exact) >= 1000  # the planted groups (3 pairs each) and a few natural ones
    assert found <= exact  # similarities are exact: nothing below the threshold
    assert len(found & exact) / len(exact) >= 0.99
    assert len(found) == len(pi)  # each pair once
    np.testing.assert_allclose(ps, np.einsum("ij,ij->i", x[pi], x[pj]), rtol=1e-5)


def test_connected_components_match_a_breadth_first_search():
    rng = np.random.default_rng(3)
    n = 500
    i, j = rng.integers(0, n, 300), rng.integers(0, n, 300)
    labels = connected_components(n, i, j)
    adj = {k: set() for k in range(n)}
    for a, b in zip(i, j):
        adj[a].add(b)
        adj[b].add(a)
    seen = {}
    for start in range(n):
        if start in seen:
            continue
        stack, comp = [start], []
        seen[start] = start
        while stack:
            u = stack.pop()
            comp.append(u)
            for v in adj[u]:
                if v not in seen:
                    seen[v] = start
                    stack.append(v)
        assert len(set(labels[comp])) == 1 and labels[comp[0]] == min(comp)


def _rows(**cols):
    n = len(next(iter(cols.values())))
    base = {"clip_id": [f"c{k}" for k in range(n)], "num_frames": [50] * n, "fps": [25.0] * n,
            "width": [320] * n, "height": [180] * n, "caption": ["a caption"] * n}
    base.update(cols)
    return pd.DataFrame(base)


def test_keep_rule_longest_then_resolution_then_caption_then_batch_first():
    df = _rows(num_frames=[50, 80, 50, 50, 50, 50, 50], width=[320, 320, 640, 320, 320, 320, 320],
               height=[180, 180, 360, 180, 180, 180, 180],
               caption=["a caption", "a caption", "x", None, "a much longer caption", "short", "short"],
               batch=[0, 0, 0, 0, 0, 1, 0])
    # group A: 0-1 (1 is longer) ; group B: 2-3 (2 has more pixels) ; group C: 3? no: 4-5-6
    group, keep = assign_groups(df, np.array([0, 2, 4, 5]), np.array([1, 3, 5, 6]))
    assert keep.tolist() == [False, True, True, False, True, False, False]
    assert group[0] == group[1] != group[2] == group[3]
    assert len(set(group[[0, 2, 4]])) == 3 and (group >= 0).all()
    df2 = _rows(caption=["ok", "ok longer", "", "y"], batch=[1, 1, 0, 0],
                caption_flags=["", "repetitive", "", ""])
    _, keep2 = assign_groups(df2, np.array([0, 2]), np.array([1, 3]))
    assert keep2.tolist() == [True, False, False, True]  # flagged caption loses; no caption loses


def test_a_captioned_clip_beats_a_longer_or_earlier_uncaptioned_one():
    # build-shards drops uncaptioned clips: keeping one would leave its group with nothing in the shards
    df = _rows(num_frames=[80, 64, 50, 50], caption=[None, "a caption", "  ", "later"], batch=[0, 0, 0, 1])
    _, keep = assign_groups(df, np.array([0, 2]), np.array([1, 3]))
    assert keep.tolist() == [False, True, False, True]


def test_exact_key_groups_identical_clips_and_singletons_get_minus_one():
    df = _rows(num_frames=[50, 50, 50, 40])
    group, keep = assign_groups(df, np.array([], int), np.array([], int), exact_key=["h1", "h2", "h1", "h3"])
    assert group.tolist()[1] == -1 and group.tolist()[3] == -1
    assert group[0] == group[2] >= 0 and keep.tolist() == [True, True, False, True]


def test_nearest_neighbour_similarity_excludes_self():
    x, _ = planted(300, 8, groups=10)
    nn = nearest_neighbour_similarity(x, sample=100, chunk=64)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    assert len(nn) == 100 and (nn < 1.0 + 1e-5).all()
    assert np.isclose(nearest_neighbour_similarity(x)[:50], sims.max(axis=1)[:50], atol=1e-5).all()


def test_faiss_index_kind_by_size_save_load_and_append(tmp_path):
    assert faiss_index.choose_params(1000, 8).kind == "flat"
    assert faiss_index.choose_params(2_000_000, 8).kind == "ivfpq"  # above FLAT_MAX: compressed
    ivf_params = faiss_index.choose_params(2_000_000, 8, "ivf")
    assert ivf_params.kind == "ivf" and ivf_params.nlist == int(4 * np.sqrt(2_000_000)) and ivf_params.nprobe > 1
    x, _ = planted(2000, 16, groups=20)
    ids = [f"id{k}" for k in range(2000)]
    vi = faiss_index.update(tmp_path, "v", x[:1500], ids[:1500])
    assert vi.index.ntotal == 1500 and vi.params.kind == "flat"
    again = faiss_index.update(tmp_path, "v", x, ids)  # a second manifest: rows appended
    assert again.index.ntotal == 2000
    loaded = faiss_index.VectorIndex.load(tmp_path, "v")
    assert loaded.clip_ids == ids
    hits = loaded.search(x[1700], k=3)[0]
    assert hits[0][0] == "id1700" and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(loaded.vector("id42"), x[42], atol=1e-6)
    with pytest.raises(UsageError, match="not in the index"):
        loaded.row("nope")
    ivf = faiss_index.VectorIndex.create(x, ids, kind="ivf")
    ivf.save(tmp_path, "ivf")
    back = faiss_index.VectorIndex.load(tmp_path, "ivf")
    assert back.params.kind == "ivf" and back.index.nprobe == back.params.nprobe
    q, rows, s = back.range_search(x[:5], 0.99)
    assert set(range(5)) <= set(rows[q == rows].tolist())
    np.testing.assert_allclose(back.vector("id42"), x[42], atol=1e-6)  # search-clips --like on an IVF index


def test_faiss_update_rebuilds_on_new_vectors_or_a_half_written_save(tmp_path):
    x, _ = planted(300, 16, groups=10)
    ids = [f"id{k}" for k in range(300)]
    faiss_index.update(tmp_path, "t", x[:200], ids[:200])
    y = x[::-1].copy()  # the same clip ids, embedded anew (captions changed)
    vi = faiss_index.update(tmp_path, "t", y, ids)
    np.testing.assert_allclose(faiss_index.VectorIndex.load(tmp_path, "t").vector("id7"), y[7], atol=1e-6)
    # killed between writing the index and its id map: the next update rebuilds instead of failing for good
    vi.save(tmp_path, "t")
    pd.DataFrame({"row": range(100), "clip_id": ids[:100]}).to_parquet(tmp_path / "t.ids.parquet")  # an old map
    with pytest.raises(ValueError):
        faiss_index.VectorIndex.load(tmp_path, "t")
    assert faiss_index.update(tmp_path, "t", y, ids).index.ntotal == 300
    assert faiss_index.VectorIndex.load(tmp_path, "t").clip_ids == ids


def test_ivfpq_index_streams_from_a_memmap_and_re_ranks_by_exact_cosine(tmp_path):
    x, rows = planted(12000, 64, groups=100)
    np.save(tmp_path / "v.npy", x)
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    ids = [f"id{k}" for k in range(len(x))]
    vi = faiss_index.VectorIndex.create(mm, ids, kind="ivfpq")
    assert vi.params.kind == "ivfpq" and vi.params.extra["m"] == 8
    assert vi.nbytes() / len(x) < 0.5 * 64 * 4  # compressed: well under the float vectors
    vi.save(tmp_path, "v")
    back = faiss_index.VectorIndex.load(tmp_path, "v")  # opens v.npy beside it to re-rank
    assert isinstance(back.vectors, faiss_index.RowReader)
    q = x[rows[:, 0]]
    hits = back.search(q, 5)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :5]
    for hh, t, qq in zip(hits, truth, q):
        got = [int(c[2:]) for c, _ in hh]
        np.testing.assert_allclose([s for _, s in hh], x[got] @ qq, rtol=1e-5)  # exact scores, not PQ's
        assert got[0] == t[0]
    recall = np.mean([len({int(c[2:]) for c, _ in hh} & set(t.tolist())) / 5 for hh, t in zip(hits, truth)])
    assert recall >= 0.9
    qi, r, s = back.range_search(q, 0.9)
    assert (s >= 0.9).all()
    np.testing.assert_allclose(s, np.einsum("ij,ij->i", q[qi], x[r]), rtol=1e-5)
    planted_found = {(int(rows[a, 0]), int(b)) for a, b in zip(qi, r)}
    want = {(int(g[0]), int(m)) for g in rows for m in g[1:] if x[g[0]] @ x[m] >= 0.9}
    assert len(want & planted_found) / len(want) >= 0.95


def test_partitioned_join_reads_a_memmap_like_an_array(tmp_path):
    x, _ = planted(25000, 32, groups=300)
    np.save(tmp_path / "v.npy", x.astype(np.float16))
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    a = near_duplicate_pairs(x.astype(np.float16).astype(np.float32), 0.9, method="partitioned")
    b = near_duplicate_pairs(mm, 0.9, method="partitioned")
    assert len(a[0]) > 500
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_a_faiss_index_on_s3_saves_loads_and_re_ranks_by_range_reads(s3):
    x, rows = planted(3000, 32, groups=40)
    url = f"{s3}/idx"
    from index import storage
    from index.dedup.cli import _save_npy
    _save_npy(storage.location(url) / "v.npy", x)
    vi = faiss_index.VectorIndex.create(x, [f"id{k}" for k in range(len(x))], kind="ivfpq")
    vi.save(url, "v")
    back = faiss_index.VectorIndex.load(url, "v")
    assert back.index.ntotal == 3000 and storage.is_remote(back.vectors.path)
    hit = back.search(x[rows[0, 0]], 3)[0]
    assert hit[0] == (f"id{rows[0, 0]}", pytest.approx(1.0, abs=1e-5))
    np.testing.assert_allclose(back.vector(f"id7"), x[7])
