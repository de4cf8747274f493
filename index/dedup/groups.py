"""Duplicate detection: exact duplicates by frame hash, near-duplicates by cosine similarity, one keeper per group.

Near-duplicate pairs are all pairs of L2-normalised vectors with cosine >= threshold:
- `exact` (n <= EXACT_MAX): chunked matrix products over the upper triangle, nothing missed.
- `partitioned` (larger n): a blocked self-join. Vectors are clustered with FAISS k-means in a PCA-reduced
  space; each vector lives in its nearest cell and probes its `probe` nearest cells, and every probe is one
  dense matrix product of full-dimension vectors. Similarities are exact, so nothing below the threshold is
  reported; a pair is missed only when neither vector probes the other's cell (measured by bench/dedup.py).
  The vectors may be a memmap of the embedding file (`np.load(path, mmap_mode="r")`, float32 or float16):
  they are read a chunk or a cell at a time and the pages read are given back, so memory does not grow with
  the file.

This is the one step that needs a global view: any clip may duplicate any other. Its state is bounded and
per clip, not per byte of embedding: the join holds its cell assignments (int32 rows and cells, about
`(2 + 3 * probe) * 4` bytes per clip: 56 B at probe 4, plus an argsort's int64 per clip-probe while it
sorts, 32 B) and the pairs found (20 B each); the components hold three int64 arrays (24 B per clip).
Measured by bench/dedup.py (peak RSS per clip).

Pairs are joined into connected components (`dup_group`); in each group one clip is kept by `KEEP_RULE`.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import asdict, dataclass

import faiss
import numpy as np
import pandas as pd

# Chosen from the measured similarities of the signature embedder on the real clips (bikes, cityCC0) and
# synthetic shots: half-size re-encodes and 20%-each-side trims of a shot score 0.94-1.0 with it, different
# shots at most 0.61 (1405 pairs). Two halves of one static shot also score above 0.9 and are grouped:
# they show the same thing. Check similarity_hist.png of your own data before changing it.
DEFAULT_THRESHOLD = 0.90
EXACT_MAX = 20_000

KEEP_RULE = ("a clip with a caption (build-shards drops uncaptioned clips, so a group never loses all its "
             "clips that way), then the earliest indexed batch (a dataset already indexed keeps its clips), then "
             "the longest clip, then the highest resolution, then a caption without check flags, then the "
             "longest caption, then the smallest clip_id")


@dataclass
class JoinParams:
    method: str
    threshold: float
    nlist: int = 0
    probe: int = 0
    pca_dim: int = 0
    train_size: int = 0


def _exact_pairs(x: np.ndarray, threshold: float, chunk: int = 2048):
    out_i, out_j, out_s = [], [], []
    for a in range(0, len(x), chunk):
        b = min(a + chunk, len(x))
        sims = x[a:b] @ x[a:].T  # (chunk, n - a)
        ii, jj = np.nonzero(sims >= threshold)
        keep = jj + a > ii + a  # upper triangle only: j > i
        out_i.append(ii[keep] + a)
        out_j.append(jj[keep] + a)
        out_s.append(sims[ii[keep], jj[keep]])
    return _cat(out_i, out_j, out_s)


def _cat(ii, jj, ss):
    if not ii:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (np.concatenate(ii).astype(np.int64), np.concatenate(jj).astype(np.int64),
            np.concatenate(ss).astype(np.float32))


class _Rows:
    """float32 rows of `x` (an array or a memmap); a memmap's pages are dropped after every ~256 MB read, so a
    pass over a file larger than memory does not fill the process's resident set."""

    DROP_BYTES = 256 << 20

    def __init__(self, x):
        self.x, self.read = x, 0
        self.mm = getattr(x, "_mmap", None)

    def __call__(self, rows) -> np.ndarray:
        out = np.ascontiguousarray(self.x[rows], dtype=np.float32)
        if self.mm is not None:
            self.read += out.nbytes
            if self.read >= self.DROP_BYTES:
                self.drop()
        return out

    def drop(self) -> None:
        if self.mm is not None and hasattr(self.mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self.mm.madvise(mmap.MADV_DONTNEED)  # read-only file pages: they stay in the page cache
        self.read = 0


def _partitioned_pairs(x, threshold: float, params: JoinParams, seed: int = 0):
    n, d = x.shape
    rows_of = _Rows(x)
    rng = np.random.default_rng(seed)
    sample = rows_of(np.sort(rng.choice(n, params.train_size, replace=False)))
    pca = faiss.PCAMatrix(d, params.pca_dim)
    pca.train(sample)
    km = faiss.Kmeans(params.pca_dim, params.nlist, niter=12, seed=seed, verbose=False)
    km.train(pca.apply(sample))
    del sample
    small = np.int32 if n < 2**31 and params.nlist < 2**31 else np.int64  # state per clip: 4-byte ints
    cells = np.empty((n, params.probe), small)
    step = 65536
    for a in range(0, n, step):  # nearest `probe` cells in the reduced space, in chunks (bounded memory)
        _, c = km.index.search(pca.apply(rows_of(slice(a, a + step))), params.probe)
        cells[a:a + step] = c
    rows_of.drop()
    home = cells[:, 0].copy()
    order = np.argsort(home, kind="stable").astype(small)  # rows grouped by home cell
    home_start = np.searchsorted(home[order], np.arange(params.nlist + 1))
    del home
    flat_cells = cells.reshape(-1)
    porder = np.argsort(flat_cells, kind="stable")  # rows grouped by probed cell
    probe_start = np.searchsorted(flat_cells[porder], np.arange(params.nlist + 1))
    del cells, flat_cells
    probe_rows = (porder // params.probe).astype(small)  # row of each flat (row, probe) entry
    del porder
    out_i, out_j, out_s = [], [], []
    for c in range(params.nlist):
        members = order[home_start[c]:home_start[c + 1]].astype(np.int64)
        visitors = probe_rows[probe_start[c]:probe_start[c + 1]].astype(np.int64)
        if len(members) == 0 or len(visitors) == 0:
            continue
        sims = rows_of(visitors) @ rows_of(members).T
        vi, mi = np.nonzero(sims >= threshold)
        a, b = visitors[vi], members[mi]
        keep = a != b
        out_i.append(np.minimum(a[keep], b[keep]))
        out_j.append(np.maximum(a[keep], b[keep]))
        out_s.append(sims[vi[keep], mi[keep]])
    i, j, s = _cat(out_i, out_j, out_s)
    if len(i):  # a pair seen from both sides counts once
        _, first = np.unique(i * n + j, return_index=True)
        i, j, s = i[first], j[first], s[first]
    return i, j, s


def join_params(n: int, dim: int, threshold: float, method: str = "auto", probe: int = 4) -> JoinParams:
    if method == "auto":
        method = "exact" if n <= EXACT_MAX else "partitioned"
    if method == "exact":
        return JoinParams("exact", float(threshold))
    if method != "partitioned":
        raise ValueError(f"unknown dedup method {method!r} (auto, exact, partitioned)")
    nlist = int(min(8192, max(16, 4 * math.sqrt(n))))
    return JoinParams("partitioned", float(threshold), nlist=nlist, probe=int(min(probe, nlist)),
                      pca_dim=int(min(64, dim)), train_size=int(min(n, 40 * nlist)))


def near_duplicate_pairs(vectors: np.ndarray, threshold: float = DEFAULT_THRESHOLD, method: str = "auto",
                         probe: int = 4, seed: int = 0):
    """All pairs i < j with cosine >= threshold: (i, j, sim) arrays and the parameters used. `vectors` may be a
    memmap of the embedding file: the partitioned join reads it a chunk or a cell at a time."""
    x = vectors if isinstance(vectors, np.memmap) else np.ascontiguousarray(vectors, dtype=np.float32)
    params = join_params(len(x), x.shape[1] if x.ndim == 2 else 0, threshold, method, probe)
    if params.method == "exact" and isinstance(x, np.memmap):
        x = np.ascontiguousarray(x, dtype=np.float32)  # n <= EXACT_MAX: small
    if len(x) < 2:
        i, j, s = _cat([], [], [])
    elif params.method == "exact":
        i, j, s = _exact_pairs(x, params.threshold)
    else:
        i, j, s = _partitioned_pairs(x, params.threshold, params, seed)
    order = np.lexsort((j, i))
    return i[order], j[order], s[order], params


def connected_components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Component label per node (the smallest node index in its component), by min-label propagation."""
    labels = np.arange(n)
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    while len(i):
        lo = np.minimum(labels[i], labels[j])
        new = labels.copy()
        np.minimum.at(new, i, lo)
        np.minimum.at(new, j, lo)
        new = new[new]  # pointer jumping
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def nearest_neighbour_similarity(vectors: np.ndarray, sample: int = 2000, seed: int = 0, chunk: int = 65536):
    """Similarity of (a sample of) clips to their nearest other clip: the histogram to choose a threshold."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(x) < 2:
        return np.zeros(0, np.float32)
    rows = np.arange(len(x)) if len(x) <= sample else np.sort(
        np.random.default_rng(seed).choice(len(x), sample, replace=False))
    best = np.full(len(rows), -1.0, np.float32)
    for a in range(0, len(x), chunk):
        sims = x[rows] @ x[a:a + chunk].T
        own = (rows >= a) & (rows < a + chunk)
        sims[np.nonzero(own)[0], rows[own] - a] = -np.inf  # a clip is not its own neighbour
        best = np.maximum(best, sims.max(axis=1))
    return np.clip(best, -1.0, 1.0)  # float rounding gives 1.0000002 for identical vectors


def _keep_order(df: pd.DataFrame) -> pd.DataFrame:
    """Sort keys for KEEP_RULE (ascending = better)."""
    dur = df["num_frames"].astype(float) / df["fps"].replace(0, np.nan).astype(float)
    caption = df["caption"].astype(object).fillna("").astype(str) if "caption" in df else pd.Series("", index=df.index)
    flags = (df["caption_flags"].astype(object).fillna("").astype(str) if "caption_flags" in df
             else pd.Series("", index=df.index))
    batch = df["batch"] if "batch" in df else pd.Series(0, index=df.index)
    return pd.DataFrame({
        "uncaptioned": (caption.str.strip() == "").astype(int), "batch": batch.astype(int), "dur": -dur.fillna(0), "pixels": -(df["width"] * df["height"]).astype(float),
        "flagged": ((caption.str.strip() == "") | (flags.str.strip() != "")).astype(int),
        "caption_len": -caption.str.len(), "clip_id": df["clip_id"].astype(str),
    }, index=df.index)


def assign_groups(df: pd.DataFrame, i: np.ndarray, j: np.ndarray, exact_key: pd.Series | None = None):
    """`dup_group` (-1 for a clip without duplicates, else 0..G-1) and `keep` per row of `df`.

    Rows with the same `exact_key` (frame hash) are joined first, then the near-duplicate pairs (i, j)."""
    n = len(df)
    ii, jj = [np.asarray(i, np.int64)], [np.asarray(j, np.int64)]
    if exact_key is not None and n:
        codes = pd.factorize(pd.Series(exact_key).astype(str).to_numpy())[0]
        first = pd.Series(np.arange(n)).groupby(codes).transform("min").to_numpy()
        same = first != np.arange(n)
        ii.append(first[same])
        jj.append(np.arange(n)[same])
    labels = connected_components(n, np.concatenate(ii), np.concatenate(jj))
    sizes = np.bincount(labels, minlength=n)
    grouped = sizes[labels] > 1
    keys = _keep_order(df.reset_index(drop=True))
    keys["label"] = labels
    dup_group = np.full(n, -1, np.int64)
    keep = np.ones(n, bool)
    if grouped.any():
        g = keys[grouped]
        # group ids ordered by each group's smallest clip_id: stable across re-runs and row order
        first_id = g.groupby("label")["clip_id"].min().sort_values(kind="stable")
        gid = pd.Series(np.arange(len(first_id)), index=first_id.index)
        dup_group[grouped] = gid.loc[g["label"]].to_numpy()
        order = ["label", "uncaptioned", "batch", "dur", "pixels", "flagged", "caption_len", "clip_id"]
        best = g.sort_values(order, kind="stable").groupby("label").head(1).index
        keep[grouped] = False
        keep[best.to_numpy()] = True
    return dup_group, keep


def params_dict(p: JoinParams) -> dict:
    return asdict(p)


def load_dedup(index_dir) -> pd.DataFrame:
    """The index folder's clip table: clip_id, video_path, dup_group, keep (+ the manifest columns)."""
    from pathlib import Path

    from ..manifest import read_manifest

    path = Path(index_dir) / "clips.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{index_dir}: not an index folder (no clips.parquet); run index-clips first")
    df = read_manifest(path)
    if "keep" not in df or "dup_group" not in df:
        raise ValueError(f"{path}: has no dedup columns; re-run index-clips")
    return df
