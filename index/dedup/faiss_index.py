"""A FAISS index over L2-normalised clip vectors (inner product = cosine), chosen by size, with its id map.

Up to `FLAT_MAX` vectors the index is exact (`IndexFlatIP`, 4 bytes x dim per vector). Beyond it (or with
`kind="ivfpq"`) it is compressed: `IVF{nlist}_HNSW32,PQ{m}np` (an inverted file whose coarse centroids are found
through an HNSW graph, each vector stored as m one-byte product-quantiser codes plus its 8-byte id: 72 bytes at
512-d instead of 2,048; "np": no polysemous training, which cost 15x the rest). The quantiser is trained on a sample and the vectors are added in batches read from
the array given (a `np.load(..., mmap_mode="r")` of the embedding file works: never all vectors in RAM at once).
PQ scores are approximate, so every search over a PQ index is re-ranked by exact cosine from the stored
embeddings (`VectorIndex.vectors`, read per query batch): a score shown is always the true similarity.
`kind="ivf"` (`IndexIVFFlat`, full floats) stays available for indexes written before.

The index file is saved beside a JSON of its parameters and an id map (`<name>.ids.parquet`, row -> clip_id):
faiss ids are row numbers. Indexes only grow: adding a manifest appends rows, so existing ids never move.
The folder may be a URL: FAISS reads and writes only local files, so the index is written to a local temp file
and uploaded, and read from a local temp copy (downloaded once per load).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np
import pandas as pd

from .. import storage
from ..engine import UsageError
from ..files import temp_name

FLAT_MAX = 1_000_000
KINDS = ("auto", "flat", "ivf", "ivfpq")
ADD_BATCH = 65_536  # rows converted to float32 and added at a time
REFINE = 8  # a PQ search takes k * REFINE candidates and keeps the k best by exact cosine
RANGE_MARGIN = 0.1  # a PQ range search looks this far below the threshold, then checks exactly


@dataclass
class IndexParams:
    kind: str  # "flat", "ivf" or "ivfpq"
    dim: int
    metric: str = "inner_product"
    nlist: int = 0
    nprobe: int = 0
    train_size: int = 0
    extra: dict = field(default_factory=dict)  # ivfpq: factory string, m, refine


def _pq_m(dim: int) -> int:
    """Sub-quantisers: dim / 8 (64 at 512-d, 48 at 384-d), a divisor of dim."""
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m


def choose_params(n: int, dim: int, kind: str = "auto") -> IndexParams:
    if kind == "auto":
        kind = "flat" if n <= FLAT_MAX else "ivfpq"
    if kind == "flat":
        return IndexParams("flat", dim)
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r} ({', '.join(KINDS)})")
    nlist = max(1, min(int(4 * math.sqrt(max(n, 1))), max(1, n // 39)))
    if kind == "ivf":
        return IndexParams("ivf", dim, nlist=nlist, nprobe=min(nlist, 16), train_size=min(n, 64 * nlist))
    # PQ codebooks need 256 training points per sub-quantiser centroid; k-means cost caps nlist
    nlist = max(1, min(nlist, 16384, max(1, n // 64)))
    m = _pq_m(dim)
    nbits = int(max(1, min(8, math.log2(max(n, 2)))))  # 256 codes per sub-quantiser; fewer for a tiny corpus
    return IndexParams("ivfpq", dim, nlist=nlist, nprobe=min(nlist, 32),
                       train_size=int(min(n, max(40 * nlist, 256 * 40))),
                       extra={"factory": f"IVF{nlist}_HNSW32,PQ{m}x{nbits}np", "m": m, "nbits": nbits,
                              "refine": REFINE})


def build(vectors, kind: str = "auto", seed: int = 0, batch: int = ADD_BATCH) -> tuple[faiss.Index, IndexParams]:
    """An index over `vectors` (any array that slices: an ndarray or a memmap of the embedding file); added
    `batch` rows at a time, so only the index and one batch are in memory."""
    n, dim = int(vectors.shape[0]), int(vectors.shape[1])
    params = choose_params(n, dim, kind)
    if params.kind == "flat":
        index = faiss.IndexFlatIP(params.dim)
    else:
        if params.kind == "ivf":
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(params.dim), params.dim, params.nlist,
                                       faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.index_factory(params.dim, params.extra["factory"], faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = 10  # coarse k-means: 10 rounds (of 25) change recall little and cost 2.5x less
        rng = np.random.default_rng(seed)
        sample = np.ascontiguousarray(vectors[np.sort(rng.choice(n, params.train_size, replace=False))],
                                      dtype=np.float32)
        index.train(sample)
        del sample
        index.nprobe = params.nprobe
    for a in range(0, n, batch):
        index.add(np.ascontiguousarray(vectors[a:a + batch], dtype=np.float32))
    return index, params


class RowReader:
    """Rows of a saved `.npy` embedding file, read on demand: a memmap on disk, range reads from a store (a
    search re-ranks a few hundred rows; it does not download the file)."""

    def __init__(self, path):
        self.path = storage.location(path)
        self._fh = None
        if not storage.is_remote(self.path):
            self._x = np.load(self.path, mmap_mode="r")
            self.shape, self.dtype = self._x.shape, self._x.dtype
            return
        self._x = None
        self._fh = storage.open_read(self.path)
        version = np.lib.format.read_magic(self._fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        self.shape, fortran, self.dtype = read(self._fh)
        if fortran or len(self.shape) != 2:
            raise UsageError(f"{storage.text(self.path)}: not a row-major matrix of embeddings")
        self._offset = self._fh.tell()

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, rows) -> np.ndarray:
        if self._x is not None:
            return np.asarray(self._x[rows], dtype=np.float32)
        rows = np.atleast_1d(np.asarray(rows, np.int64))
        width = int(self.shape[1]) * self.dtype.itemsize
        out = np.empty((len(rows), self.shape[1]), np.float32)
        for k, r in enumerate(rows):
            self._fh.seek(self._offset + int(r) * width)
            out[k] = np.frombuffer(self._fh.read(width), self.dtype)
        return out


class VectorIndex:
    """A saved FAISS index + its parameters + the row -> clip_id map (+ the exact vectors a PQ index re-ranks by:
    `vectors`, an array or `RowReader` row-aligned with the ids)."""

    def __init__(self, index: faiss.Index, params: IndexParams, clip_ids: list[str], vectors=None):
        if index.ntotal != len(clip_ids):
            raise ValueError(f"index holds {index.ntotal} vectors but the id map {len(clip_ids)}")
        self.index, self.params, self.clip_ids = index, params, list(clip_ids)
        self.vectors = vectors
        self.digest = ""  # of the vectors it holds, as saved (see `update`)
        self._direct = False
        self._row: dict[str, int] = {}
        for i, c in enumerate(self.clip_ids):
            self._row.setdefault(c, i)  # the same clip indexed twice (a copied file): first row wins

    @classmethod
    def create(cls, vectors, clip_ids: list[str], kind: str = "auto") -> "VectorIndex":
        index, params = build(vectors, kind)
        return cls(index, params, clip_ids, vectors)

    def add(self, vectors, clip_ids: list[str]) -> None:
        """Append rows (in batches). A flat index that grows past FLAT_MAX is rebuilt by the caller (`update`)."""
        for a in range(0, len(vectors), ADD_BATCH):
            self.index.add(np.ascontiguousarray(vectors[a:a + ADD_BATCH], dtype=np.float32))
        self.clip_ids.extend(clip_ids)
        for i, c in enumerate(clip_ids):
            self._row.setdefault(c, len(self.clip_ids) - len(clip_ids) + i)

    @property
    def approximate(self) -> bool:
        return self.params.kind == "ivfpq"

    def _exact(self) -> bool:
        if self.approximate and self.vectors is None:
            raise ValueError("a PQ index re-ranks by the exact vectors: give VectorIndex its vectors")
        return self.approximate

    def row(self, clip_id: str) -> int:
        if clip_id not in self._row:
            raise UsageError(f"clip {clip_id} is not in the index")
        return self._row[clip_id]

    def vector(self, clip_id: str) -> np.ndarray:
        if self.vectors is not None:
            return np.asarray(self.vectors[[self.row(clip_id)]], np.float32)[0]
        if self.params.kind != "flat" and not self._direct:
            self.index.make_direct_map()  # an IVF index reconstructs rows only through a direct map
            self._direct = True
        return self.index.reconstruct(self.row(clip_id))

    def _rerank(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact cosine of each query with its candidate rows (-inf where there is none)."""
        flat = rows.reshape(-1)
        ok = flat >= 0
        uniq, inv = np.unique(flat[ok], return_inverse=True)
        sims = np.full(flat.shape, -np.inf, np.float32)
        if len(uniq):
            cand = np.asarray(self.vectors[uniq], np.float32)
            qi = np.repeat(np.arange(len(q)), rows.shape[1])[ok]
            sims[ok] = np.einsum("ij,ij->i", q[qi], cand[inv])
        return sims.reshape(rows.shape)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[tuple[str, float]]]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(int(k), self.index.ntotal)
        if not self._exact():
            scores, rows = self.index.search(q, k)
        else:  # k * refine PQ candidates, the k best by exact cosine
            _, rows = self.index.search(q, min(self.index.ntotal, k * int(self.params.extra.get("refine", REFINE))))
            sims = self._rerank(q, rows)
            best = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            scores, rows = np.take_along_axis(sims, best, 1), np.take_along_axis(rows, best, 1)
            rows = np.where(np.isfinite(scores), rows, -1)
        return [[(self.clip_ids[r], float(s)) for r, s in zip(rr, ss) if r >= 0] for rr, ss in zip(rows, scores)]

    def range_search(self, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (query, row, similarity) with similarity >= threshold (for a PQ index: PQ candidates down to
        threshold - RANGE_MARGIN, kept when their exact cosine reaches the threshold)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        exact = self._exact()
        lims, sims, rows = self.index.range_search(q, float(threshold) - (RANGE_MARGIN if exact else 0.0))
        qidx = np.repeat(np.arange(len(q)), np.diff(lims.astype(np.int64)))
        rows = rows.astype(np.int64)
        if exact and len(rows):
            uniq, inv = np.unique(rows, return_inverse=True)
            sims = np.einsum("ij,ij->i", q[qidx], np.asarray(self.vectors[uniq], np.float32)[inv])
            keep = sims >= threshold
            qidx, rows, sims = qidx[keep], rows[keep], sims[keep]
        return qidx, rows, sims

    def nbytes(self) -> int:
        """Bytes of the serialized index (what it holds in memory, within a few percent)."""
        return int(faiss.serialize_index(self.index).size)

    # ------------------------------------------------------------ persistence

    def save(self, folder, name: str) -> None:
        folder = storage.location(folder)
        storage.makedirs(folder)
        target = folder / f"{name}.faiss"
        if storage.is_remote(folder):  # FAISS writes local files only: a temp file, then one upload
            fd, local = tempfile.mkstemp(suffix=".faiss")
            os.close(fd)
        else:
            local = temp_name(target)
        try:
            faiss.write_index(self.index, os.fspath(local))
            if not storage.is_remote(folder):
                with open(local, "rb") as f:
                    os.fsync(f.fileno())
            storage.upload(local, target)
        finally:
            if os.path.exists(local):
                os.unlink(local)
        buf = io.BytesIO()
        pd.DataFrame({"row": np.arange(len(self.clip_ids)), "clip_id": self.clip_ids}).to_parquet(buf, index=False)
        storage.write_bytes(folder / f"{name}.ids.parquet", buf.getvalue())
        meta = {**asdict(self.params), "ntotal": int(self.index.ntotal), "faiss_version": faiss.__version__,
                "vectors_sha1": self.digest}
        storage.write_text(folder / f"{name}.json", json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder, name: str, vectors=None) -> "VectorIndex":
        """`vectors`: the row-aligned embeddings (a path to the .npy or an array); a PQ index without them
        opens `<name>.npy` beside it."""
        folder = storage.location(folder)
        path = folder / f"{name}.faiss"
        if not storage.exists(path):
            raise UsageError(f"{storage.text(folder)}: no {name} index (run index-clips first)")
        try:
            index = _read_index(path)
            meta = json.loads(storage.read_text(folder / f"{name}.json"))
            params = IndexParams(**{k: v for k, v in meta.items() if k in IndexParams.__dataclass_fields__})
            ids = pd.read_parquet(io.BytesIO(storage.read_bytes(folder / f"{name}.ids.parquet"))
                                  ).sort_values("row")["clip_id"].tolist()
        except (RuntimeError, ValueError, OSError, KeyError, TypeError) as e:  # faiss raises RuntimeError
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise UsageError(f"{storage.text(folder)}: the {name} index is damaged or incomplete ({first}); run "
                             "index-clips again on the same output folder to rebuild it") from None
        if index.ntotal != len(ids):
            raise UsageError(f"{storage.text(folder)}: the {name} index holds {index.ntotal} vectors for {len(ids)} "
                             "clip ids; run index-clips again on the same output folder to rebuild it")
        if params.kind != "flat":
            index.nprobe = params.nprobe
        if vectors is None and params.kind == "ivfpq":
            vectors = folder / f"{name}.npy"
        if vectors is not None and not isinstance(vectors, np.ndarray):
            if not storage.exists(vectors):
                raise UsageError(f"{storage.text(vectors)}: missing; a PQ index re-ranks by these embeddings "
                                 "(run index-clips again on the same output folder)")
            vectors = RowReader(vectors)
            if len(vectors) != len(ids):
                raise UsageError(f"{storage.text(folder)}: {len(vectors)} embeddings for {len(ids)} indexed clips; "
                                 "run index-clips again on the same output folder to rebuild it")
        vi = cls(index, params, ids, vectors)
        vi.digest = meta.get("vectors_sha1", "")
        return vi


def _read_index(path) -> faiss.Index:
    if not storage.is_remote(path):
        return faiss.read_index(os.fspath(path))
    with tempfile.TemporaryDirectory() as tmp:  # FAISS reads local files only: one download
        local = os.path.join(tmp, path.name)
        fs, p = storage.fs_path(path)
        fs.get_file(p, local)
        return faiss.read_index(local)


def _digest(vectors, batch: int = ADD_BATCH) -> str:
    h = hashlib.sha1()
    for a in range(0, len(vectors), batch):
        h.update(np.ascontiguousarray(vectors[a:a + batch], dtype=np.float32).tobytes())
    return h.hexdigest()


def update(folder, name: str, vectors, clip_ids: list[str], kind: str = "auto") -> VectorIndex:
    """Bring the saved index up to date with all rows: append the new tail, or rebuild when the saved rows
    differ (other ids, or other vectors: captions embedded anew), the size calls for another kind, or the
    saved files do not agree with each other (a kill between their writes)."""
    clip_ids = list(clip_ids)
    try:
        old = VectorIndex.load(folder, name, vectors=vectors)
    except Exception:  # missing or inconsistent: the vectors passed in are the truth, so rebuild
        old = None
    want = choose_params(len(clip_ids), vectors.shape[1] if vectors.ndim == 2 else 0, kind).kind
    n = len(old.clip_ids) if old is not None else 0
    if (old is not None and old.params.kind == want and old.params.dim == vectors.shape[1]
            and old.clip_ids == clip_ids[:n] and old.digest == _digest(vectors[:n])):
        if n < len(clip_ids):
            old.add(vectors[n:], clip_ids[n:])
            old.vectors = vectors
            old.digest = _digest(vectors)
            old.save(folder, name)
        return old
    vi = VectorIndex.create(vectors, clip_ids, kind)
    vi.digest = _digest(vectors)
    vi.save(folder, name)
    return vi
