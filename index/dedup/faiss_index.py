"""A FAISS index over L2-normalised clip vectors (inner product = cosine), chosen by size, with its id map.

Up to `FLAT_MAX` vectors the index is exact (`IndexFlatIP`); beyond it is `IndexIVFFlat` with
`nlist = 4 * sqrt(n)` lists trained on a sample and `nprobe` recorded. The index file is saved beside a
JSON of its parameters and an id map (`<name>.ids.parquet`, row -> clip_id): faiss ids are row numbers.
Indexes only grow: adding a manifest appends rows, so existing ids never move.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from ..engine import UsageError
from ..files import atomic_write_bytes, atomic_write_text

FLAT_MAX = 1_000_000


@dataclass
class IndexParams:
    kind: str  # "flat" or "ivf"
    dim: int
    metric: str = "inner_product"
    nlist: int = 0
    nprobe: int = 0
    train_size: int = 0
    extra: dict = field(default_factory=dict)


def choose_params(n: int, dim: int, kind: str = "auto") -> IndexParams:
    if kind == "auto":
        kind = "flat" if n <= FLAT_MAX else "ivf"
    if kind == "flat":
        return IndexParams("flat", dim)
    if kind != "ivf":
        raise ValueError(f"unknown index kind {kind!r} (auto, flat, ivf)")
    nlist = max(1, min(int(4 * math.sqrt(max(n, 1))), max(1, n // 39)))
    return IndexParams("ivf", dim, nlist=nlist, nprobe=min(nlist, 16), train_size=min(n, 64 * nlist))


def build(vectors: np.ndarray, kind: str = "auto", seed: int = 0) -> tuple[faiss.Index, IndexParams]:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    params = choose_params(len(x), x.shape[1], kind)
    if params.kind == "flat":
        index = faiss.IndexFlatIP(params.dim)
    else:
        quantizer = faiss.IndexFlatIP(params.dim)
        index = faiss.IndexIVFFlat(quantizer, params.dim, params.nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = x[np.sort(rng.choice(len(x), params.train_size, replace=False))]
        index.train(sample)
        index.nprobe = params.nprobe
    index.add(x)
    return index, params


class VectorIndex:
    """A saved FAISS index + its parameters + the row -> clip_id map."""

    def __init__(self, index: faiss.Index, params: IndexParams, clip_ids: list[str]):
        if index.ntotal != len(clip_ids):
            raise ValueError(f"index holds {index.ntotal} vectors but the id map {len(clip_ids)}")
        self.index, self.params, self.clip_ids = index, params, list(clip_ids)
        self.digest = ""  # of the vectors it holds, as saved (see `update`)
        self._direct = False
        self._row: dict[str, int] = {}
        for i, c in enumerate(self.clip_ids):
            self._row.setdefault(c, i)  # the same clip indexed twice (a copied file): first row wins

    @classmethod
    def create(cls, vectors: np.ndarray, clip_ids: list[str], kind: str = "auto") -> "VectorIndex":
        index, params = build(vectors, kind)
        return cls(index, params, clip_ids)

    def add(self, vectors: np.ndarray, clip_ids: list[str]) -> None:
        """Append rows. A flat index that grows past FLAT_MAX is rebuilt as IVF by the caller (`update`)."""
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.clip_ids.extend(clip_ids)
        for i, c in enumerate(clip_ids):
            self._row.setdefault(c, len(self.clip_ids) - len(clip_ids) + i)

    def row(self, clip_id: str) -> int:
        if clip_id not in self._row:
            raise UsageError(f"clip {clip_id} is not in the index")
        return self._row[clip_id]

    def vector(self, clip_id: str) -> np.ndarray:
        if self.params.kind == "ivf" and not self._direct:
            self.index.make_direct_map()  # an IVF index reconstructs rows only through a direct map
            self._direct = True
        return self.index.reconstruct(self.row(clip_id))

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[tuple[str, float]]]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, rows = self.index.search(q, min(int(k), self.index.ntotal))
        return [[(self.clip_ids[r], float(s)) for r, s in zip(rr, ss) if r >= 0] for rr, ss in zip(rows, scores)]

    def range_search(self, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (query, row, similarity) with similarity >= threshold."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        lims, sims, rows = self.index.range_search(q, float(threshold))
        qidx = np.repeat(np.arange(len(q)), np.diff(lims.astype(np.int64)))
        return qidx, rows.astype(np.int64), sims

    # ------------------------------------------------------------ persistence

    def save(self, folder, name: str) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        buf = faiss.serialize_index(self.index)
        atomic_write_bytes(folder / f"{name}.faiss", buf.tobytes())
        ids = pd.DataFrame({"row": np.arange(len(self.clip_ids)), "clip_id": self.clip_ids})
        atomic_write_bytes(folder / f"{name}.ids.parquet", ids.to_parquet(index=False))
        meta = {**asdict(self.params), "ntotal": int(self.index.ntotal), "faiss_version": faiss.__version__,
                "vectors_sha1": self.digest}
        atomic_write_text(folder / f"{name}.json", json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder, name: str) -> "VectorIndex":
        folder = Path(folder)
        path = folder / f"{name}.faiss"
        if not path.exists():
            raise UsageError(f"{folder}: no {name} index (run index-clips first)")
        try:
            index = faiss.deserialize_index(np.frombuffer(path.read_bytes(), dtype=np.uint8))
            meta = json.loads((folder / f"{name}.json").read_text())
            params = IndexParams(**{k: v for k, v in meta.items() if k in IndexParams.__dataclass_fields__})
            ids = pd.read_parquet(folder / f"{name}.ids.parquet").sort_values("row")["clip_id"].tolist()
        except (RuntimeError, ValueError, OSError, KeyError, TypeError) as e:  # faiss raises RuntimeError
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise UsageError(f"{folder}: the {name} index is damaged or incomplete ({first}); run index-clips "
                             "again on the same output folder to rebuild it") from None
        if index.ntotal != len(ids):
            raise UsageError(f"{folder}: the {name} index holds {index.ntotal} vectors for {len(ids)} clip ids; "
                             "run index-clips again on the same output folder to rebuild it")
        if params.kind == "ivf":
            index.nprobe = params.nprobe
        vi = cls(index, params, ids)
        vi.digest = meta.get("vectors_sha1", "")
        return vi


def _digest(vectors: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(vectors, dtype=np.float32).tobytes()).hexdigest()


def update(folder, name: str, vectors: np.ndarray, clip_ids: list[str], kind: str = "auto") -> VectorIndex:
    """Bring the saved index up to date with all rows: append the new tail, or rebuild when the saved rows
    differ (other ids, or other vectors: captions embedded anew), the size calls for another kind, or the
    saved files do not agree with each other (a kill between their writes)."""
    clip_ids = list(clip_ids)
    try:
        old = VectorIndex.load(folder, name)
    except Exception:  # missing or inconsistent: the vectors passed in are the truth, so rebuild
        old = None
    want = choose_params(len(clip_ids), vectors.shape[1] if vectors.ndim == 2 else 0, kind).kind
    n = len(old.clip_ids) if old is not None else 0
    if (old is not None and old.params.kind == want and old.params.dim == vectors.shape[1]
            and old.clip_ids == clip_ids[:n] and old.digest == _digest(vectors[:n])):
        if n < len(clip_ids):
            old.add(vectors[n:], clip_ids[n:])
            old.digest = _digest(vectors)
            old.save(folder, name)
        return old
    vi = VectorIndex.create(vectors, clip_ids, kind)
    vi.digest = _digest(vectors)
    vi.save(folder, name)
    return vi
