"""Streamed queries over manifests and parts: DuckDB, with bounded memory, local files and URLs alike.

    with connect() as con:
        sql = f"SELECT * FROM {files_sql(con, files)} ORDER BY video_path, start_frame"
        for batch in batches(con, sql): ...

DuckDB sorts, joins and aggregates out of core: past `memory_limit` (SHOTCAP_QUERY_MEMORY, default 128MB) it spills
to a temporary folder on local disk, so merging, sorting, `--where`, joins of columns between stages and a data
card's statistics hold a bounded amount of memory whatever the size of the manifest. A sort's working set grows with
the threads sorting (measured: 1.5M caption rows sorted on 4 threads do not fit in 128MB; on 1 they do), so a query
runs on SHOTCAP_QUERY_THREADS threads (default 1: the driver's memory stays flat; a sort of 10^7 rows takes about a
minute) and the memory limit is per thread. Remote files are read through
the same fsspec filesystems as everything else (registered with the connection), so s3://, gs://, az:// work here
as they do in the storage layer, with the same credentials.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile

import pyarrow as pa

import index.storage as storage

NUMBERS = ("start_sec", "end_sec", "start_frame", "end_frame", "fps", "width", "height", "num_frames")
def _megabytes(text: str) -> int:
    """'128MB', '2GB' or a number of MB."""
    t = text.strip().upper().removesuffix("B")
    return int(float(t[:-1]) * 1024) if t.endswith("G") else int(float(t.removesuffix("M")))


MEMORY_MB = _megabytes(os.environ.get("SHOTCAP_QUERY_MEMORY", "128MB"))  # per thread
THREADS = int(os.environ.get("SHOTCAP_QUERY_THREADS", "1"))
SORT_ROWS = int(os.environ.get("SHOTCAP_SORT_ROWS", 500_000))  # rows sorted at once (see `Sorted`)
BATCH_ROWS = 65_536


@contextlib.contextmanager
def connect(memory_limit: str | None = None, threads: int | None = None):
    """A DuckDB connection for one job: memory bounded, spilling to a private temporary folder removed after."""
    import duckdb

    tmp = tempfile.mkdtemp(prefix="shotcap-query-")
    threads = int(threads or THREADS)
    con = duckdb.connect(config={"memory_limit": memory_limit or f"{MEMORY_MB * threads}MB", "temp_directory": tmp,
                                 "threads": threads,
                                 "preserve_insertion_order": True})
    con.execute("SET enable_progress_bar = false")
    try:
        yield con
    finally:
        con.close()
        shutil.rmtree(tmp, ignore_errors=True)


def quote(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def ident(name: str) -> str:
    """A SQL identifier (a column name)."""
    return '"' + str(name).replace('"', '""') + '"'


def file_path(con, loc) -> str:
    """The path DuckDB reads `loc` by: a local path, or the URL through the registered fsspec filesystem."""
    loc = storage.location(loc)
    if not storage.is_remote(loc):
        return os.fspath(loc)
    fs = loc.fs
    names = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if not set(names) & set(con.list_filesystems()):
        con.register_filesystem(fs)
    return f"{loc.protocol}://{loc.path}"


def files_sql(con, files, order: bool = False) -> str:
    """`read_parquet([...])` over Parquet files whose columns may differ (unified by name); `order=True` adds
    `filename` and `file_row_number`, the files' own order of rows."""
    paths = ", ".join(quote(file_path(con, f)) for f in files)
    extra = ", filename=true, file_row_number=true" if order else ""
    return f"read_parquet([{paths}], union_by_name=true{extra})"


def arrow(con, name: str, table: pa.Table) -> str:
    """An Arrow table (a list of keys, a small frame) as the table `name` of the connection (every cursor sees
    it); returns the name."""
    con.register("_arrow_in", table)
    try:
        con.execute(f"CREATE OR REPLACE TABLE {ident(name)} AS SELECT * FROM _arrow_in")
    finally:
        con.unregister("_arrow_in")
    return name


def part_rows(con, store, keys=None, ids=None, sort_by=None, columns=None):
    """The rows of a `PartStore`'s batches as a relation (None when there is none): `keys` only those units' rows;
    `ids` only rows of those clip ids, each clip once (the first batch in name order); sorted by `sort_by`
    (then clip_id) when given, else in the batches' order."""
    files = store.files()
    if not files:
        return None
    where = []
    if keys is not None:
        arrow(con, "_keys", pa.table({"k": pa.array(sorted(keys), pa.string())}))
        where.append("_unit IN (SELECT k FROM _keys)")
    if ids is not None:
        arrow(con, "_ids", pa.table({"k": pa.array(sorted(map(str, ids)), pa.string())}))
        where.append("clip_id IN (SELECT k FROM _ids)")
    first = ids is not None  # each clip once: the first row in the files' order, which the window needs spelt out
    cols = ", ".join(ident(c) for c in columns) if columns else \
        "* EXCLUDE (filename, file_row_number)" if first else "*"
    sql = f"SELECT {cols} FROM {files_sql(con, files, order=first)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if ids is not None:
        sql += " QUALIFY row_number() OVER (PARTITION BY clip_id ORDER BY filename, file_row_number) = 1"
    names = names_of(con, f"SELECT * FROM {files_sql(con, files)}")
    order = [c for c in (sort_by or ()) if c in names]
    if order:
        tie = ["clip_id"] if "clip_id" in names and "clip_id" not in order else []
        return Sorted(sql, [*order, *tie])
    # unsorted, the rows come in the files' order (the connection preserves insertion order): no sort to spill
    return sql


class Sorted(str):
    """A query sorted by columns of its result: as a string, `SELECT * FROM (sql) ORDER BY order` (minus `drop`);
    given to `batches`, the sort is done in pieces of at most SORT_ROWS rows each, so a manifest of any size is
    sorted in the memory of one piece (the working set of DuckDB's sort grows with the rows sorted: measured
    peak RSS 333 MB for 150k caption rows, 489 MB for 1.5M and 675 MB for 15M in one sort)."""

    def __new__(cls, sql: str, order, drop=()):
        order, drop = list(order), list(drop)
        cols = f"* EXCLUDE ({', '.join(map(ident, drop))})" if drop else "*"
        self = super().__new__(cls, f"SELECT {cols} FROM ({sql}) ORDER BY {', '.join(map(ident, order))}")
        self.sql, self.order, self.drop, self.cols = sql, order, drop, cols
        return self


def batches(con, sql: str, rows: int = BATCH_ROWS):
    """A query's result as Arrow record batches of `rows` rows, streamed on a cursor of its own (so the connection
    stays free for other work while the batches are read). A `Sorted` query is sorted piecewise (`sorted_batches`)."""
    if isinstance(sql, Sorted):
        yield from sorted_batches(con, sql, rows)
        return
    cur = con.cursor()
    try:
        yield from cur.sql(sql).to_arrow_reader(rows)
    finally:
        cur.close()


def sorted_batches(con, q: Sorted, rows: int = BATCH_ROWS, piece_rows: int | None = None):
    """`q`'s rows in its order, sorted in pieces: up to `piece_rows` rows (SHOTCAP_SORT_ROWS) one sort; past it
    the rows are split by ranges of the first sort column (bounds from a seeded sample) into local Parquet files
    of about `piece_rows` rows each, in one pass, then each file is sorted in turn. Rows with the same first
    column go to the same piece, so the result is exactly the one sort's."""
    import numpy as np
    import pyarrow.parquet as pq

    piece_rows = int(piece_rows or SORT_ROWS)
    n = scalar(con, f"SELECT count(*) FROM ({q.sql})")
    if n <= piece_rows:
        yield from batches(con, str(q), rows)
        return
    key, pieces = q.order[0], math.ceil(n / piece_rows)
    sample = con.execute(f"SELECT {ident(key)} AS k FROM ({q.sql}) USING SAMPLE reservoir({64 * pieces} ROWS) "
                         "REPEATABLE (7)").fetchnumpy()["k"]
    sample = np.sort(np.asarray(sample, dtype=object))
    bounds = np.unique(sample[[len(sample) * i // pieces for i in range(1, pieces)]])
    tmp = tempfile.mkdtemp(prefix="shotcap-sort-")
    writers: dict = {}
    try:
        for batch in batches(con, q.sql, rows):
            which = np.searchsorted(bounds, batch.column(key).to_numpy(zero_copy_only=False), side="right")
            for j in np.unique(which):
                if j not in writers:
                    writers[j] = pq.ParquetWriter(os.path.join(tmp, f"{j:06d}.parquet"), batch.schema)
                writers[j].write_batch(batch.filter(pa.array(which == j)))
        for j in sorted(writers):
            writers.pop(j).close()
            piece = quote(os.path.join(tmp, f"{j:06d}.parquet"))
            yield from batches(con, f"SELECT {q.cols} FROM read_parquet({piece}) ORDER BY "
                                    f"{', '.join(map(ident, q.order))}", rows)
    finally:
        for w in writers.values():
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)


def names_of(con, sql: str) -> list[str]:
    """The columns a query would return (nothing is read)."""
    return [d[0] for d in con.execute(f"SELECT * FROM ({sql}) LIMIT 0").description]


# ---------------------------------------------------------------- a stage's input, streamed

_GOOD = """coalesce(clip_id IS NOT NULL AND trim(CAST(clip_id AS VARCHAR)) <> ''
 AND video_path IS NOT NULL AND trim(CAST(video_path AS VARCHAR)) <> ''
 AND start_frame >= 0 AND end_frame > start_frame AND num_frames = end_frame - start_frame
 AND isfinite(CAST(fps AS DOUBLE)) AND fps > 0 AND isfinite(CAST(width AS DOUBLE)) AND width > 0
 AND isfinite(CAST(height AS DOUBLE)) AND height > 0
 AND isfinite(CAST(start_sec AS DOUBLE)) AND start_sec >= 0
 AND isfinite(CAST(end_sec AS DOUBLE)) AND end_sec > start_sec, false)"""


class Input:
    """A stage's input manifest inside a connection: the view `input` holds its usable rows, each with `_row` (its
    position in the manifest), and `failures` one record per row it cannot use (values out of range, a clip_id
    repeating an earlier row), found in one streamed pass. Small hand-edited JSONL/CSV manifests are read with
    `index.manifest.read_manifest` (their text numbers and booleans parsed), Parquet manifests are never loaded."""

    def __init__(self, con, path, stage: str):
        from .manifest import ManifestError, _check_columns, _row_problem, _TYPES, check_version, manifest_files

        self.con, self.path, self.stage = con, path, stage
        loc = storage.location(path)
        if not storage.exists(loc):
            raise ManifestError(f"{path}: no such manifest")
        if loc.suffix.lower() in (".jsonl", ".csv"):
            from .manifest import read_manifest

            df = read_manifest(loc)
            arrow(con, "_input_df", pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False))
            con.execute("CREATE VIEW _src AS SELECT *, row_number() OVER () - 1 AS _row FROM _input_df")
        else:
            files = manifest_files(loc)
            import pyarrow.parquet as pq

            offsets, total = [], 0
            for f in files:
                meta = pq.read_metadata(_open(f))
                if not offsets:
                    try:
                        check_version(meta.schema.to_arrow_schema(), path)
                    except ManifestError:
                        raise
                offsets.append((file_path(con, f), total))
                total += meta.num_rows
            arrow(con, "_offsets", pa.table({"f": [f for f, _ in offsets], "o": [o for _, o in offsets]}))
            con.execute(f"CREATE VIEW _src AS SELECT s.* EXCLUDE (filename, file_row_number), "
                        f"s.file_row_number + o.o AS _row FROM {files_sql(con, files, order=True)} s "
                        f"JOIN _offsets o ON s.filename = o.f")
        types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM _src)").fetchall())
        self.columns = [c for c in types if c != "_row"]
        _check_columns(self.columns, path)
        for col, kind in _TYPES.items():
            t = str(types.get(col, "")).upper()
            if col in types and kind in ("int", "float") and t in ("VARCHAR", "BLOB"):
                raise ManifestError(f"{path}: column {col} holds text, not numbers (write it as numbers)")
        # the rows that cannot be used: few, so they come into Python for their one-line reasons
        con.execute(f"CREATE TABLE _bad AS SELECT * FROM (SELECT *, "
                    f"row_number() OVER (PARTITION BY clip_id ORDER BY _row) > 1 AS _dup, {_GOOD} AS _good "
                    f"FROM _src) WHERE _dup OR NOT _good")
        self.failures = []
        from .parts import failure
        from .record import CORE_COLUMNS

        cols = ", ".join(ident(c) for c in CORE_COLUMNS)
        for batch in batches(con, f"SELECT {cols}, _row, _dup FROM _bad ORDER BY _row"):
            for r in batch.to_pylist():
                # a missing number reads as pandas shows it (nan), as the reason has always said
                r = {k: (math.nan if v is None and k in NUMBERS else v) for k, v in r.items()}
                why = _row_problem(r) or ("clip_id repeats an earlier row (a manifest holds each clip once)"
                                          if r["_dup"] else "a value out of range")
                self.failures.append(failure(r["video_path"], stage,
                                             f"{path} row {r['_row']} (clip {r['clip_id']}): {why}"))
        con.execute("CREATE VIEW input AS SELECT * FROM _src WHERE _row NOT IN (SELECT _row FROM _bad)")
        self.rows = total if loc.suffix.lower() not in (".jsonl", ".csv") else len(df)
        self.count = self.rows - len(self.failures)

    def drop_sources(self, bad: set) -> None:
        """Leave out the rows of these (video_path, video_sha256) sources (missing, unreadable or replaced)."""
        if not bad:
            return
        arrow(self.con, "_bad_sources", pa.table({"p": [p for p, _ in bad], "s": [s for _, s in bad]}))
        self.con.execute("CREATE OR REPLACE VIEW input AS SELECT * FROM _src WHERE _row NOT IN "
                         "(SELECT _row FROM _bad) AND (video_path, video_sha256) NOT IN "
                         "(SELECT (p, s) FROM _bad_sources)")
        self.count = self.con.execute("SELECT count(*) FROM input").fetchall()[0][0]

    def sources(self):
        """(video_path, video_sha256, clips) of each source of the usable rows, in path order (streamed)."""
        sql = "SELECT video_path, video_sha256, count(*) FROM input GROUP BY ALL ORDER BY ALL"
        for batch in batches(self.con, sql):
            yield from zip(*[batch.column(i).to_pylist() for i in range(3)])

    def hours(self, where: str = "true") -> float:
        return float(self.con.execute(f"SELECT coalesce(sum(greatest(end_sec - start_sec, 0)), 0) / 3600 FROM input "
                                  f"WHERE {where}").fetchall()[0][0])


def _open(loc):
    if storage.is_remote(loc):
        fs, p = storage.fs_path(loc)
        return fs.open(p, "rb")
    return os.fspath(loc)


def check_sources(inp: Input, hashes, stage: str) -> list[dict]:
    """Drop from `inp` the rows whose source file no longer holds the content they were made from (`hashes`: an
    `index.files.HashCache`, so an unchanged file costs a stat, or for a store one listing per folder); one failure
    per missing, unreadable or replaced source: a caption or score of other content must never reach the shards."""
    from .engine import BadInput
    from .parts import failure

    bad, fails, listed = set(), [], {}
    for path, sha, n in inp.sources():
        try:
            info = None
            if storage.is_remote(path):
                loc = storage.location(path)
                folder = str(loc.parent)
                if folder not in listed:  # one listing per folder, not a request per source
                    listed[folder] = storage.listing(loc.parent)
                info = listed[folder].get(loc.name)
                if info is None:
                    raise BadInput("video missing")
            elif not storage.exists(path):
                raise BadInput("video missing")
            if hashes.sha256(path, info) != sha:
                raise BadInput("video changed since it was split (sha256 mismatch)")
        except BadInput as e:
            bad.add((path, sha))
            fails.append(failure(path, stage, f"{n} clips: {e}"))
    inp.drop_sources(bad)
    return fails


def done_ids(con, store, name: str = "_done_ids") -> str:
    """A relation `name` of the clip ids `store` holds (rows, and failures unless `retry_failed`)."""
    failed = [] if store.retry_failed else [i for rec in store.failures() for i in rec.get("ids", ())]
    arrow(con, "_failed_ids", pa.table({"clip_id": pa.array(failed, pa.string())}))
    files = [f for f in store.files()]
    parts = (f"SELECT CAST(clip_id AS VARCHAR) AS clip_id FROM {files_sql(con, files)} WHERE clip_id IS NOT NULL "
             "UNION ALL " if files and "clip_id" in names_of(con, f"SELECT * FROM {files_sql(con, files)}")
             else "")
    con.execute(f"CREATE OR REPLACE VIEW {name} AS {parts}SELECT clip_id FROM _failed_ids")
    return name


def clip_set_units(con, store, salt: str = "", where: str = "true", source: str = "input"):
    """One `Unit` per source video holding its clips of `source` (rows matching `where`) that `store` has not
    done, streamed in (video_path, video_sha256) order, its rows (dicts) in frame order; a unit's key covers its
    clip set, so a manifest of more clips of a source done before redoes only the new clips."""
    import hashlib

    from .engine import Unit

    done = done_ids(con, store)
    sql = (f"SELECT * EXCLUDE (_row) FROM {source} WHERE ({where}) AND clip_id NOT IN "
                  f"(SELECT clip_id FROM {done}) ORDER BY video_path, video_sha256, start_frame, clip_id")

    def unit(rows):
        ids = tuple(str(r["clip_id"]) for r in rows)
        sha = rows[0]["video_sha256"]
        key = hashlib.sha256("\n".join([salt, str(sha), *sorted(ids)]).encode()).hexdigest()[:32]
        return Unit(key, str(rows[0]["video_path"]), data=rows, weight=len(ids), ids=ids)

    cur, group = None, []
    for batch in batches(con, sql):
        for r in batch.to_pylist():
            src = (r["video_path"], r["video_sha256"])
            if src != cur and group:
                yield unit(group)
                group = []
            cur = src
            group.append(r)
    if group:
        yield unit(group)


def join_parts(con, store, columns, where_kept: str | None = None, source: str = "input"):
    """A stage's output as a relation: the rows of `source` (in their order) that have a part row, with the
    stage's `columns` from the parts (replacing the input's own copies; no other column is touched; a clip's
    first part row in batch order), plus, when `where_kept` is given, the rows matching it as they are (done
    before, passed through)."""
    files = store.files()
    names = names_of(con, f"SELECT * FROM {files_sql(con, files)}") if files else []
    own = [c for c in names_of(con, f"SELECT * FROM {source}") if c != "_row"]
    cols = [c for c in columns if c in names]
    base = [c for c in own if c not in cols]
    flag = f"coalesce({where_kept}, false)" if where_kept is not None else "false"
    src = f"(SELECT *, {flag} AS _kept FROM {source})"
    kept = f"SELECT {', '.join(ident(c) for c in own)}, _row FROM {src} WHERE _kept"
    if not files:
        return Sorted(kept, ["_row"], drop=["_row"])
    pick = "".join(f", p.{ident(c)}" for c in cols)
    parts = (f"SELECT CAST(clip_id AS VARCHAR) AS clip_id{''.join(', ' + ident(c) for c in cols)} "
             f"FROM {files_sql(con, files, order=True)} QUALIFY row_number() OVER (PARTITION BY clip_id "
             f"ORDER BY filename, file_row_number) = 1")
    joined = (f"SELECT {', '.join('i.' + ident(c) for c in base)}{pick}, i._row FROM {src} i "
              f"JOIN ({parts}) p ON CAST(i.clip_id AS VARCHAR) = p.clip_id WHERE NOT i._kept")
    return Sorted(f"{kept} UNION ALL BY NAME {joined}", ["_row"], drop=["_row"])


def stage_failures(con, store, source: str = "input") -> list[dict]:
    """The failure records of the clips of `source` that have no part row (a clip that failed once and
    succeeded since, in a retry or another clip set, is not listed), sorted; records naming no clip are kept."""
    records = list(store.failures())
    ids = sorted({i for r in records for i in r.get("ids", ())})
    if not ids:
        return store.failure_records() if records else []
    arrow(con, "_fail_ids", pa.table({"clip_id": pa.array(ids, pa.string())}))
    want = {r[0] for r in con.execute(f"SELECT DISTINCT CAST(clip_id AS VARCHAR) FROM {source} "
                                  "WHERE CAST(clip_id AS VARCHAR) IN (SELECT clip_id FROM _fail_ids)").fetchall()}
    have = set()
    files = store.files()
    if files and "clip_id" in names_of(con, f"SELECT * FROM {files_sql(con, files)}"):
        have = {r[0] for r in con.execute(f"SELECT DISTINCT CAST(clip_id AS VARCHAR) FROM {files_sql(con, files)} "
                                      "WHERE CAST(clip_id AS VARCHAR) IN (SELECT clip_id FROM _fail_ids)").fetchall()}
    return store.failure_records(ids=want, have=have)


def count_done_rows(con, store, source: str = "input") -> int:
    """Rows of `source` that already have a part row in `store` (done in an earlier run)."""
    files = store.files()
    if not files or "clip_id" not in names_of(con, f"SELECT * FROM {files_sql(con, files)}"):
        return 0
    return con.execute(f"SELECT count(*) FROM {source} WHERE CAST(clip_id AS VARCHAR) IN "
                   f"(SELECT CAST(clip_id AS VARCHAR) FROM {files_sql(con, files)})").fetchall()[0][0]


def hours(con, manifest) -> float:
    """Hours of video in a written manifest (from the PTS ranges)."""
    from .manifest import manifest_files

    src = files_sql(con, manifest_files(manifest))
    return float(con.execute(f"SELECT coalesce(sum(greatest(end_sec - start_sec, 0)), 0) / 3600 "
                             f"FROM {src}").fetchall()[0][0])


def scalar(con, sql: str):
    """The one value a query returns."""
    return con.execute(sql).fetchall()[0][0]


def count_rows(con, files) -> int:
    """Rows of these Parquet files (0 for none)."""
    return scalar(con, f"SELECT count(*) FROM {files_sql(con, files)}") if files else 0


def sum_column(con, files, column: str) -> int:
    """The sum of a numeric column over these Parquet files (0 when none has it)."""
    if not files or column not in names_of(con, f"SELECT * FROM {files_sql(con, files)}"):
        return 0
    return int(scalar(con, f"SELECT coalesce(sum({ident(column)}), 0) FROM {files_sql(con, files)}"))
