"""Resumable parts: the rows the units of a stage produced, written in batches, and the ledger of what is done.

    OUT/.parts/STAGE/
      config.json         the options that change the output (a re-run with other options is refused)
      NAME.parquet        one batch of finished units: their rows, each with `_unit` (its unit's key), and in the
                          file's metadata the keys it completes and the failure records of its units

A batch is written as one file, atomically (temp file + rename on disk, one PUT on a store), so the rows and the
keys they complete appear together: after kill -9 at any moment a unit is in a committed batch or is redone.
Batches are flushed every `flush_units` units, `flush_rows` rows or `flush_seconds` seconds, whichever comes first,
so a million units cost a thousand files, not a million. A re-run learns what is done from one listing and the
metadata of each batch (one read each), never a request per unit; the keys are held as 16-byte digests.

Compaction joins small batches into larger ones (`compact`): the joined batch names the files it replaces in its
metadata and is written before they are deleted; a store that finds both (a kill during compaction) deletes the
replaced files before reading, so no row is counted twice.

`key` is derived from everything a unit's output depends on (content hashes, clip ids); `config` is stored on first
use. A failed unit counts as done unless `retry_failed`; a unit that succeeds later replaces its failure.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import index.storage as storage
from .engine import UsageError
from .files import remove_own_temps, temp_file_for

UNIT = "_unit"  # the column naming each row's unit
META = b"shotcap.part"  # {"done": [keys], "failed": [records], "replaces": [file names]}
FLUSH_SECONDS = 30.0  # at most this much finished work waits in memory (SHOTCAP_FLUSH_SECONDS): a kill loses no more
ROW_GROUP = 65_536  # rows per Parquet row group: what a reader holds of a file at once
TAIL = 1 << 16  # bytes read from a batch's end for its metadata (one request; more only for a larger footer)


class ManifestError(UsageError):
    """A manifest, or an output folder's parts, that cannot be used (another run's options): one line, exit 2."""


PartsError = ManifestError


def display_path(path) -> str:
    """A path as text that can always be written (a file name that is not valid UTF-8 shows its bytes as \\xNN)."""
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def failure(path, stage: str, reason: str) -> dict:
    """A failure record as failed.jsonl holds it: path, stage, and a one-line reason."""
    return {"path": display_path(path), "stage": stage, "reason": " ".join(str(reason).split())[:300]}


def digest(keys) -> np.ndarray:
    """16-byte digests of unit keys, as a numpy 'S16' array (what the ledger holds)."""
    return np.array([hashlib.blake2b(str(k).encode(), digest_size=16).digest() for k in keys], dtype="S16")


class Ledger:
    """A set of 16-byte digests in sorted runs that merge as they grow (as a binary counter): adding n keys in
    batches costs O(n log n) in all, a lookup O(log n) per run, and memory 16 bytes per key."""

    def __init__(self):
        self.runs: list[np.ndarray] = []

    def add(self, d: np.ndarray) -> None:
        run = np.unique(d)
        while self.runs and len(self.runs[-1]) <= 2 * len(run):
            run = np.union1d(self.runs.pop(), run)
        self.runs.append(run)

    def contains(self, d: np.ndarray) -> np.ndarray:
        out = np.zeros(len(d), bool)
        for run in self.runs:
            if len(run) and len(d):
                pos = np.searchsorted(run, d).clip(0, len(run) - 1)
                out |= run[pos] == d
        return out

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)


@dataclass
class Batch:
    """A committed batch file and what its metadata says."""
    name: str
    rows: int
    done: list | int = field(default_factory=list)  # the keys, until indexed into the ledger; then their count
    failed: list = field(default_factory=list)  # records: {key, kind ("unit" | "item"), path, stage, reason, ids}
    replaces: list = field(default_factory=list)
    size: int = 0


def to_table(rows) -> pa.Table:
    """A unit's rows (DataFrame, Arrow table or batch, list of dicts) as an Arrow table."""
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows])
    if isinstance(rows, list):
        rows = pd.DataFrame(rows)
    return pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)


def conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """`t` with exactly `schema`'s columns (missing ones null), each cast to its type."""
    cols = [t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(len(t), f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema.remove_metadata())


def concat(tables: list[pa.Table]) -> pa.Table:
    """Tables whose columns differ (a column all null in one, an int in one and a float in another) as one."""
    tables = [t.replace_schema_metadata(None) for t in tables]
    if not tables:
        return pa.table({UNIT: pa.array([], pa.string())})
    schema = pa.unify_schemas([t.schema for t in tables], promote_options="permissive")
    return pa.concat_tables([conform(t, schema) for t in tables])


class _Tail(io.RawIOBase):
    """The end of a remote file of known size, read in one request: all Parquet's footer reader asks for."""

    def __init__(self, data: bytes, size: int):
        self.data, self.size, self.pos = data, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def tell(self):
        return self.pos

    def readinto(self, b):
        start = self.pos - (self.size - len(self.data))
        if start < 0:
            raise OSError("read before the fetched footer")
        chunk = self.data[start:start + len(b)]
        b[:len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)


class PartStore:
    """The parts of one stage in one output folder or URL (see the module docstring)."""

    def __init__(self, out_dir, stage: str, config: dict | None = None, retry_failed: bool = False,
                 flush_units: int = 1000, flush_rows: int = 100_000, flush_seconds: float | None = None,
                 ledger: bool = True):
        self.out = storage.location(out_dir)
        self.dir = self.out / ".parts" / stage
        self.stage, self.retry_failed = stage, retry_failed
        if flush_seconds is None:
            flush_seconds = float(os.environ.get("SHOTCAP_FLUSH_SECONDS", FLUSH_SECONDS))
        self.flush_units, self.flush_rows, self.flush_seconds = int(flush_units), int(flush_rows), float(flush_seconds)
        storage.makedirs(self.dir)
        if config is not None:
            self._check_config(config)
        self._token = f"{time.time_ns():016x}-{os.getpid()}-{secrets.token_hex(3)}"
        self._seq = 0
        self._buffer: list = []  # (key, table | None, [failure records])
        self._buffered: set = set()
        self._buffered_rows = 0
        self._since = None
        self._committed: list = []  # a writer's keys committed since `take_committed` was last asked
        self._tracks = not ledger  # only a writer (a Ray worker's store) reports its commits; the driver's keeps none
        self._known: dict = {}  # batch name -> Batch already read (a reload reads only new batches)
        self.batches, self._done, self._failed = [], Ledger(), Ledger()
        if ledger:  # the driver's store, made before any writer starts: a killed run's temp files go
            remove_own_temps(self.dir)
            self._load()

    def writer_spec(self) -> tuple:
        """What a worker needs to write batches of this store itself (`PartStore.writer(*spec)`)."""
        return (str(self.out), self.stage, self.flush_units, self.flush_rows, self.flush_seconds)

    @classmethod
    def writer(cls, out_dir, stage: str, flush_units: int, flush_rows: int, flush_seconds: float) -> "PartStore":
        """A store that only writes (a Ray worker's): it reads no ledger and checks no config."""
        return cls(out_dir, stage, None, False, flush_units, flush_rows, flush_seconds, ledger=False)

    def take_committed(self) -> list:
        """The keys (done or failed) this store committed since the last call."""
        out, self._committed = self._committed, []
        return out

    def reload(self) -> None:
        """Read the ledger again (batches written by other writers: Ray workers); the buffer is flushed first."""
        self.flush()
        self._load()

    def _check_config(self, config: dict) -> None:
        cfg = self.dir / "config.json"
        text = json.dumps(config, sort_keys=True, default=str)
        try:
            old_text = storage.read_text(cfg)
        except FileNotFoundError:
            old_text = None
        if old_text is not None and old_text != text:
            old, new = json.loads(old_text), json.loads(text)
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise PartsError(f"{self.out} holds a {self.stage} run made with other options "
                             f"({', '.join(diff)}); use a new output folder or delete it")
        if old_text is None:
            storage.write_text(cfg, text)

    # ------------------------------------------------------------ the ledger
    def _load(self) -> None:
        """One listing, then each batch's metadata; completes a compaction a kill interrupted."""
        entries = storage.listing(self.dir)
        names = sorted(n for n in entries if n.endswith(".parquet") and not n.startswith("."))
        batches = {n: self._known[n] if n in self._known else self._read_meta(n, entries[n]) for n in names}
        self._known = {n: b for n, b in batches.items() if b is not None}
        legacy = [n for n, b in batches.items() if b is None]
        replaced = {r for b in batches.values() if b is not None for r in b.replaces if r in batches}
        if replaced:  # a compaction was killed after writing its batch: its inputs go now
            storage.remove_many([self.dir / n for n in sorted(replaced)])
        self.batches = [b for n, b in sorted(batches.items()) if b is not None and n not in replaced]
        self._done, self._failed = Ledger(), Ledger()
        for b in self.batches:
            self._index(b)
        if legacy:
            self._migrate(legacy, entries)

    def _index(self, b: Batch) -> None:
        """Into the ledger; the batch keeps only counts of its keys (a list of them would grow with the corpus)."""
        if b.done:
            self._done.add(digest(b.done))
            b.done = len(b.done)
        units = [r["key"] for r in b.failed if r.get("kind", "unit") == "unit"]
        if units:
            self._failed.add(digest(units))

    def _read_meta(self, name: str, info: dict) -> Batch | None:
        path = self.dir / name
        if storage.is_remote(path):
            size = int(info.get("size") or 0)
            fs, p = storage.fs_path(path)
            tail = fs.cat_file(p, start=max(0, size - TAIL), end=size)
            footer = int.from_bytes(tail[-8:-4], "little") + 8
            if footer > len(tail):
                tail = fs.cat_file(p, start=max(0, size - footer), end=size)
            meta = pq.read_metadata(_Tail(tail, size))
        else:
            meta = pq.read_metadata(path)
        kv = (meta.metadata or {}).get(META)
        if kv is None:
            return None  # a part of the one-file-per-unit layout: see _migrate
        m = json.loads(kv)
        return Batch(name, meta.num_rows, m.get("done", []), m.get("failed", []), m.get("replaces", []),
                     int(info.get("size") or 0))

    def _migrate(self, legacy: list[str], entries: dict) -> None:
        """Parts written one file per unit (KEY.parquet, KEY.failed.json, KEY-N.failed.json for an item) by an
        earlier version become one batch, so the work they hold is kept and counted once."""
        tables, done, failed = [], [], []
        for name in legacy:
            key = name[:-len(".parquet")]
            t = pq.read_table(_source(self.dir / name))
            tables.append(t.append_column(UNIT, pa.array([key] * len(t), pa.string())))
            done.append(key)
        for name in sorted(n for n in entries if n.endswith(".failed.json")):
            rec = json.loads(storage.read_text(self.dir / name))
            stem = name[:-len(".failed.json")]
            item = stem not in entries and f"{stem}.parquet" not in entries and "-" in stem
            key = stem.rsplit("-", 1)[0] if item else stem
            if not item and key in done:
                continue  # it succeeded since
            failed.append({**rec, "key": key, "kind": "item" if item else "unit", "ids": rec.get("ids", [])})
        meta = {"done": done, "failed": failed, "replaces": []}
        self._commit(self._name(), concat(tables), meta)
        storage.remove_many([self.dir / n for n in legacy] +
                            [self.dir / n for n in entries if n.endswith(".failed.json")])

    def done(self, key: str) -> bool:
        return bool(self.done_many([key])[0])

    def done_many(self, keys) -> np.ndarray:
        """Which of `keys` are finished (or failed, unless `retry_failed`), as a boolean array."""
        keys = list(keys)
        d = digest(keys)
        out = self._done.contains(d)
        if not self.retry_failed:
            out |= self._failed.contains(d)
        if self._buffered:
            out |= np.fromiter((k in self._buffered for k in keys), bool, len(keys))
        return out

    def keys(self) -> set[str]:
        """Keys of the finished units (small stores, tests)."""
        return ({k for b in self.batches for k in self._meta(b.name)["done"]}
                | {k for k, t, _ in self._buffer if t is not None})

    def _meta(self, name: str) -> dict:
        """A committed batch's metadata, read again (the keys it completes are not kept in memory)."""
        meta = pq.read_metadata(_source(self.dir / name)).metadata or {}
        return json.loads(meta.get(META, b"{}"))

    def files(self) -> list:
        """The committed batch files, in name order."""
        return [self.dir / b.name for b in self.batches]

    def state(self, listed: bool = False) -> str:
        """A digest of the committed batches (names, rows and sizes; with `listed`, a fresh listing's times or
        ETags too, so a batch rewritten in place counts as changed): equal digests, equal parts."""
        self.flush()
        marks = storage.listing(self.dir) if listed else {}
        tag = lambda n: str(marks.get(n, {}).get("mtime_ns") or marks.get(n, {}).get("ETag") or "")  # noqa: E731
        text = json.dumps([(b.name, b.rows, b.size, tag(b.name)) for b in self.batches])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def rewrite(self, name: str, rows) -> None:
        """Replace the rows of committed batch `name` (atomically, under its name), keeping what it completes."""
        b = next(x for x in self.batches if x.name == name)
        table = to_table(rows)
        self.batches.remove(b)
        self._commit(name, table, {**self._meta(name), "failed": b.failed})

    # ------------------------------------------------------------ writing
    def write(self, key: str, rows, failures=()) -> None:
        """A finished unit: its rows (DataFrame, Arrow table or list of dicts) and its items' failure records
        (`item_failure`)."""
        table = to_table(rows)
        if UNIT not in table.column_names:
            table = table.append_column(UNIT, pa.array([key] * len(table), pa.string()))
        self._add(key, table, list(failures))

    def fail(self, key: str, path, reason: str, ids=()) -> dict:
        """A failed unit (bad input): recorded with its one-line reason and the clip ids it covers."""
        rec = failure(path, self.stage, reason)
        self._add(key, None, [{**rec, "key": key, "kind": "unit", "ids": [str(i) for i in ids]}])
        return rec

    def item_failure(self, key: str, path, reason: str, ids=()) -> dict:
        """The record of one item of unit `key` that failed (a clip), to hand to `write` with the unit's rows."""
        return {**failure(path, self.stage, reason), "key": key, "kind": "item", "ids": [str(i) for i in ids]}

    def _add(self, key: str, table, failures: list) -> None:
        if self._since is None:
            self._since = time.monotonic()
        self._buffer.append((key, table, failures))
        self._buffered.add(key)
        self._buffered_rows += len(table) if table is not None else 0
        if (len(self._buffer) >= self.flush_units or self._buffered_rows >= self.flush_rows
                or time.monotonic() - self._since >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        """Commit the buffered units as one batch file (nothing when the buffer is empty)."""
        if not self._buffer:
            return
        buffer = self._buffer
        done = [k for k, t, _ in buffer if t is not None]
        failed = [f for _, _, fs in buffer for f in fs]
        self._commit(self._name(), concat([t for _, t, _ in buffer if t is not None]), {"done": done, "failed": failed})
        if self._tracks:
            self._committed += [k for k, _, _ in buffer]
        self._buffer, self._buffered, self._buffered_rows, self._since = [], set(), 0, None

    def close(self) -> None:
        self.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()  # what finished is kept, whatever stopped the block
        return False

    def _name(self) -> str:
        self._seq += 1
        return f"{self._token}-{self._seq:06d}.parquet"

    def _commit(self, name: str, table: pa.Table, meta: dict) -> None:
        table = table.replace_schema_metadata({META: json.dumps(meta, ensure_ascii=False).encode()})
        sink = io.BytesIO()
        pq.write_table(table, sink, row_group_size=ROW_GROUP)
        data = sink.getvalue()
        storage.write_bytes(self.dir / name, data)
        self._added(Batch(name, len(table), meta["done"], meta["failed"], meta.get("replaces", []), len(data)))

    def _added(self, b: Batch) -> None:
        self._known[b.name] = b
        self.batches.append(b)
        self.batches.sort(key=lambda x: x.name)
        self._index(b)

    # ------------------------------------------------------------ compaction
    def compact(self, target_rows: int = 1_000_000, min_files: int = 16) -> int:
        """Join runs of batches (up to `target_rows` rows each) when there are at least `min_files` batches; returns
        the files removed. Streamed: one input batch in memory at a time."""
        self.flush()
        if len(self.batches) < min_files:
            return 0
        groups, cur, rows = [], [], 0
        for b in self.batches:
            if cur and rows + b.rows > target_rows:
                groups.append(cur)
                cur, rows = [], 0
            cur.append(b)
            rows += b.rows
        groups.append(cur)
        removed = 0
        for group in (g for g in groups if len(g) > 1):
            self._join(group)
            removed += len(group)
        return removed

    def _join(self, group: list[Batch]) -> None:
        schema = pa.unify_schemas([pq.read_schema(_source(self.dir / b.name)).remove_metadata() for b in group],
                                  promote_options="permissive")
        meta = {"done": [k for b in group for k in self._meta(b.name)["done"]], "failed": [f for b in group for f in b.failed],
                "replaces": [b.name for b in group]}
        name = self._name()
        local = temp_file_for(self.dir / name)
        try:
            with pq.ParquetWriter(local, schema.with_metadata({META: json.dumps(meta, ensure_ascii=False).encode()})) as w:
                for b in group:
                    w.write_table(conform(pq.read_table(_source(self.dir / b.name)), schema), row_group_size=ROW_GROUP)
            size = os.path.getsize(local)
            storage.upload(local, self.dir / name)  # the joined batch is complete before any input goes
        finally:
            if os.path.exists(local):
                os.unlink(local)
        joined = Batch(name, sum(b.rows for b in group), len(meta["done"]), meta["failed"], meta["replaces"], size)
        self.batches = sorted([b for b in self.batches if b not in group] + [joined], key=lambda x: x.name)
        self._known = {**{k: v for k, v in self._known.items() if k not in meta["replaces"]}, name: joined}
        storage.remove_many([self.dir / b.name for b in group])

    # ------------------------------------------------------------ failures
    def failures(self, keys=None):
        """The failure records in force (with `key`, `kind`, `ids`), batch by batch: a unit's failure is gone once
        the unit succeeded, and of two failures of one unit (a retry that failed again) the later one is kept.
        `keys`: only those units' records."""
        last = {}  # unit key -> (batch order, record) of its latest unit-level failure
        done = self._done
        for n, b in enumerate(self.batches + [Batch("~buffer", 0, [], [f for _, _, fs in self._buffer for f in fs])]):
            for rec in b.failed:
                if keys is not None and rec["key"] not in keys:
                    continue
                if rec.get("kind", "unit") == "item":
                    yield rec
                else:
                    last[rec["key"]] = rec
        if last:
            succeeded = done.contains(digest(list(last)))
            for rec, ok in zip(list(last.values()), succeeded):
                if not ok:
                    yield rec

    def failure_records(self, keys=None, ids=None, have=()) -> list[dict]:
        """Failure records as failed.jsonl holds them, sorted (small stores). `ids`: only failures of those clips
        that did not succeed since (`have`: the ids with rows)."""
        out = []
        want, have = (set(ids) if ids is not None else None), set(have)
        for rec in self.failures(keys):
            if want is not None and rec.get("ids") and not (set(rec["ids"]) & want) - have:
                continue
            out.append({k: v for k, v in rec.items() if k not in ("key", "kind", "ids")})
        return sorted(out, key=lambda r: (r["path"], r["reason"]))

    # ------------------------------------------------------------ reading (small stores and tests)
    def done_ids(self, column: str = "clip_id") -> set:
        """Ids in the parts (and, unless `retry_failed`, in the failures): small stores only (a set in memory);
        the stages ask `index.query` instead."""
        self.flush()
        ids = set()
        for f in self.files():
            if column in pq.read_schema(_source(f)).names:
                ids.update(pq.read_table(_source(f), columns=[column]).column(column).to_pylist())
        if not self.retry_failed:
            for rec in self.failures():
                ids.update(rec.get("ids", ()))
        return ids

    def merge(self, sort_by=("video_path", "start_frame"), keys=None, ids=None) -> tuple[pd.DataFrame, list[dict]]:
        """All parts as one sorted DataFrame and the failure records, in memory: for small stores and tests (the
        stages stream theirs through `index.query`). `keys`: only those units'; `ids`: only rows (and failures) of
        those clip ids, each clip once (the first batch in name order)."""
        from . import query

        self.flush()
        with query.connect() as con:
            sql = query.part_rows(con, self, keys=keys, ids=ids, sort_by=sort_by)
            df = con.execute(sql).df() if sql is not None else pd.DataFrame(columns=["clip_id"])
        df = df.drop(columns=[c for c in (UNIT,) if c in df.columns]).reset_index(drop=True)
        have = set(df["clip_id"]) if ids is not None and "clip_id" in df else ()
        return df, self.failure_records(keys=keys, ids=ids, have=have)


def _source(loc):
    """What pyarrow reads a file from: a local path, or an fsspec file object."""
    if storage.is_remote(loc):
        fs, p = storage.fs_path(loc)
        return fs.open(p, "rb")
    return str(loc)
