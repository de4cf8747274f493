"""Manifests: Parquet datasets read and written in record batches, failed.jsonl, provenance, a stage's input.

A manifest is one Parquet file (`clips.parquet`, readable by `pandas.read_parquet(path)`) or, past
`ROWS_PER_FILE` rows, a folder of that name holding `part-00000.parquet`, `part-00001.parquet`, ... in order, and
`_manifest.json` (the files and their rows), written last: a folder without it is a manifest being written, and
is refused rather than read in part. pandas, pyarrow and DuckDB read either shape as one table. Every path may
be a URL (see `index.storage`).

A stage processes units and writes their rows with `index.parts.PartStore`; its manifest is then written from the
parts with `index.query` (sorted, joined, streamed), so a kill at any point followed by a re-run gives the same
manifest as an uninterrupted run, and no stage holds the whole manifest in memory.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import index.storage as storage
from .engine import Interrupted, UsageError, ctrl_c_guard, ignore_ctrl_c
from .files import temp_file_for, temp_name
from .parts import ManifestError, PartStore, display_path, failure  # noqa: F401  (part of this module's API)
from .record import CORE_COLUMNS, SCHEMA_VERSION, STAGE_COLUMNS

META_KEY = b"shotcap.schema_version"
FAILED_NAME = "failed.jsonl"
PROVENANCE_NAME = "provenance.json"
DATASET_INDEX = "_manifest.json"
ROWS_PER_FILE = int(os.environ.get("SHOTCAP_ROWS_PER_FILE", 1_000_000))
ROW_GROUP = 65_536
# Columns anyone may add without registering them (scores, user metadata).
FREE_PREFIXES = ("score_", "meta_", "x_")


# ---------------------------------------------------------------- manifest read / write

def _check_columns(columns, path, require_core: bool = True) -> None:
    missing = [c for c in CORE_COLUMNS if c not in columns] if require_core else []
    if missing:
        raise ManifestError(f"{path}: not a shotcap manifest, missing columns: {', '.join(missing)}")
    unknown = [c for c in columns if c not in CORE_COLUMNS and c not in STAGE_COLUMNS
               and not c.startswith(FREE_PREFIXES)]
    if unknown:
        raise ManifestError(f"{path}: unknown columns {', '.join(map(str, unknown))} "
                            f"(prefix your own columns with one of {', '.join(FREE_PREFIXES)})")


def manifest_files(path) -> list:
    """The Parquet files of a manifest, in order: [the file] or a dataset folder's files. A folder holding our
    part files but no `_manifest.json` was being written when its command stopped: refused in one line."""
    loc = storage.location(path)
    if storage.is_file(loc):
        return [loc]
    entries = storage.listing(loc)
    if not entries:
        raise ManifestError(f"{path}: no such manifest")
    if DATASET_INDEX in entries:
        index = json.loads(storage.read_text(loc / DATASET_INDEX))
        return [loc / name for name in index["files"]]
    files = sorted(n for n in entries if n.endswith(".parquet") and not n.startswith(("_", ".")))
    if any(n.startswith("part-") for n in files):
        raise ManifestError(f"{path}: a manifest being written or cut short (no {DATASET_INDEX}); run the command "
                            "that writes it again to finish it")
    if not files:
        raise ManifestError(f"{path}: no Parquet files in this folder")
    return [loc / n for n in files]  # a folder of Parquet files someone else wrote: read in name order


def manifest_folder(path):
    """The folder a manifest's companions (failed.jsonl, provenance.json) lie in: a manifest's parent, a folder
    that is no manifest itself."""
    loc = storage.location(path)
    name = loc.name.lower()
    if name.endswith((".parquet", ".jsonl", ".csv")) or not storage.is_dir(loc):
        return loc.parent
    return loc


def open_files(files) -> pa.Table:
    """The files as one table (columns unified by name); for small manifests (tests, exports, the index)."""
    tables = [pq.read_table(_source(f)) for f in files]
    meta = tables[0].schema.metadata if tables else None
    from .parts import concat

    t = concat(tables) if len(tables) > 1 else tables[0]
    return t.replace_schema_metadata(meta)


def _source(loc):
    if storage.is_remote(loc):
        fs, p = storage.fs_path(loc)
        return fs.open(p, "rb")
    return os.fspath(loc)


class ManifestWriter:
    """Writes a manifest from record batches, atomically, holding at most one row group in memory.

        with ManifestWriter(out / "clips.parquet") as w:
            for batch in batches: w.write(batch)

    Up to `rows_per_file` rows it is one file (temp file + rename, or one upload); past that a folder of files and
    `_manifest.json`, written last (see the module docstring). The same rows give the same bytes. `check`: the
    columns are checked as a manifest's (off for other Parquet outputs such as index.parquet)."""

    def __init__(self, path, rows_per_file: int | None = None, check: bool = True):
        self.path = storage.location(path)
        self.rows_per_file = int(rows_per_file or ROWS_PER_FILE)
        self.check = check
        self.files: list[tuple[str, int]] = []  # (local temp or uploaded name, rows) of finished files
        self.rows = 0
        self._writer = self._local = None
        self._schema = None
        self._pending: list = []
        self._pending_rows = 0
        self._file_rows = 0
        self._folder = False
        if storage.is_remote(self.path):
            self._tmp = tempfile.mkdtemp(prefix="shotcap-manifest-")
        else:  # beside the manifest (the rename stays on one filesystem), named as our temp files are
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = os.fspath(temp_name(self.path))
            os.mkdir(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        if kind is None:
            self.close()
        else:
            self.abort()
        return False

    def write(self, rows) -> None:
        from .parts import to_table

        table = to_table(rows)
        if self._schema is None:
            if self.check:
                _check_columns(table.column_names, self.path)
            meta = {**(table.schema.metadata or {}), META_KEY: str(SCHEMA_VERSION).encode()}
            self._schema = table.schema.with_metadata(meta)
        elif table.schema.remove_metadata() != self._schema.remove_metadata():
            table = table.cast(self._schema.remove_metadata()) if table.column_names == self._schema.names else \
                table.select(self._schema.names).cast(self._schema.remove_metadata())
        if not len(table):
            return
        self._pending.append(table)
        self._pending_rows += len(table)
        while self._pending_rows >= min(ROW_GROUP, self.rows_per_file - self._file_rows):
            self._emit(min(ROW_GROUP, self.rows_per_file - self._file_rows))

    def _emit(self, n: int) -> None:
        table = pa.concat_tables([t.replace_schema_metadata(None) for t in self._pending]).combine_chunks()
        group, rest = table.slice(0, n), table.slice(n)
        self._pending, self._pending_rows = ([rest] if len(rest) else []), len(rest)
        if self._writer is None:
            self._local = os.path.join(self._tmp, f"part-{len(self.files):05d}.parquet")
            self._writer = pq.ParquetWriter(self._local, self._schema)
        if self.check and group.num_rows and pc.count_distinct(group.column("clip_id")).as_py() != group.num_rows:
            _repeated(group, self.path)
        self._writer.write_table(group.replace_schema_metadata(self._schema.metadata), row_group_size=ROW_GROUP)
        self._file_rows += len(group)
        self.rows += len(group)
        if self._file_rows >= self.rows_per_file:
            self._end_file()

    def _end_file(self) -> None:
        self._writer.close()
        self._writer = None
        self.files.append((self._local, self._file_rows))
        self._file_rows = 0
        if len(self.files) == 2 and not self._folder:  # a second file: the manifest is a folder
            self._begin_folder()
        if self._folder:
            self._upload(len(self.files) - 1)

    def _begin_folder(self) -> None:
        self._folder = True
        if storage.is_file(self.path):  # a single-file manifest of ours becomes a folder
            storage.remove(self.path)
        storage.remove(self.path / DATASET_INDEX)  # from here until it is written again, the folder is incomplete
        storage.makedirs(self.path)
        self._upload(0)

    def _upload(self, k: int) -> None:
        local, rows = self.files[k]
        name = f"part-{k:05d}.parquet"
        storage.upload(local, self.path / name)
        self.files[k] = (name, rows)

    def close(self) -> None:
        if self._pending_rows:
            self._emit(self._pending_rows)
        if self._writer is not None:
            self._end_file()
        try:
            if not self.files:  # no rows: an empty manifest of the schema (or of the core columns)
                schema = self._schema or pa.schema([(c, pa.string()) for c in CORE_COLUMNS]).with_metadata(
                    {META_KEY: str(SCHEMA_VERSION).encode()})
                local = os.path.join(self._tmp, "empty.parquet")
                pq.write_table(schema.empty_table(), local)
                self.files.append((local, 0))
            if not self._folder:
                self._place_single(self.files[0][0])
            else:
                self._commit_folder()
        finally:
            self.abort()

    def _place_single(self, local: str) -> None:
        if storage.is_dir(self.path):  # a folder manifest of ours becomes one file again
            storage.remove(self.path / DATASET_INDEX)
            storage.remove_many([self.path / n for n in storage.listing(self.path) if n.startswith("part-")])
            if not storage.is_remote(self.path):
                os.rmdir(self.path)
        storage.upload(local, self.path)

    def _commit_folder(self) -> None:
        names = [n for n, _ in self.files]
        stale = [n for n in storage.listing(self.path) if n.startswith("part-") and n not in names]
        storage.remove_many([self.path / n for n in stale])
        if self.check and len(self.files) > 1:
            _check_unique(self.path, names)
        index = {"files": names, "rows": [r for _, r in self.files], "schema_version": SCHEMA_VERSION}
        storage.write_text(self.path / DATASET_INDEX, json.dumps(index, indent=1))

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        import shutil

        shutil.rmtree(self._tmp, ignore_errors=True)


def _repeated(table: pa.Table, path) -> None:
    ids = table.column("clip_id").to_pandas()
    rep = ids[ids.duplicated()]
    raise RuntimeError(f"{path}: clip_id {rep.iloc[0]} on more than one row ({len(rep)} repeats); "
                       "a manifest holds each clip once")


def _check_unique(path, names) -> None:
    """Each clip on one row across the files of a folder manifest (a repeat is a bug of the stage that wrote it)."""
    from . import query

    with query.connect() as con:
        files = query.files_sql(con, [path / n for n in names])
        row = con.execute(f"SELECT clip_id, count(*) AS n FROM {files} GROUP BY clip_id HAVING n > 1 LIMIT 1").fetchall()
    if row:
        raise RuntimeError(f"{path}: clip_id {row[0]} on more than one row; a manifest holds each clip once")


def write_manifest(df, path, rows_per_file: int | None = None):
    """Write a manifest (a DataFrame or an Arrow table) atomically, with the schema version in its metadata. Each
    clip is on one row: a repeated `clip_id` is a bug of the stage that made the frame, and stops it."""
    with ManifestWriter(path, rows_per_file) as w:
        w.write(df)
    return storage.location(path)


def write_stream(batches, path, rows_per_file: int | None = None, check: bool = True) -> int:
    """Write record batches (a query's result) as a manifest; returns the rows written."""
    with ManifestWriter(path, rows_per_file, check=check) as w:
        for b in batches:
            w.write(b)
    return w.rows


def read_manifest(path) -> pd.DataFrame:
    """Read a manifest (.parquet file or folder, .jsonl or .csv) into memory and check it; clear one-line errors
    otherwise. For small manifests; stages stream theirs (`index.query.open_input`)."""
    loc = storage.location(path)
    if not storage.exists(loc):
        raise ManifestError(f"{path}: no such manifest")
    suffix = loc.suffix.lower()
    try:
        if suffix in (".jsonl", ".csv"):
            with storage.open_read(loc) as f:
                df = pd.read_json(f, lines=True) if suffix == ".jsonl" else pd.read_csv(f)
        else:
            table = open_files(manifest_files(loc))
            check_version(table.schema, path)
            df = table.to_pandas()
    except ManifestError:
        raise
    except Exception as e:  # pyarrow / pandas raise many types for a malformed file
        raise ManifestError(f"{path}: cannot read manifest ({type(e).__name__}: {str(e)[:200]})") from None
    _check_columns(df.columns, path)
    return _check_values(df, path)


def check_version(schema: pa.Schema, path) -> None:
    version = (schema.metadata or {}).get(META_KEY)
    if version is not None and int(version) > SCHEMA_VERSION:
        raise ManifestError(f"{path}: schema version {int(version)} is newer than this "
                            f"shotcap's ({SCHEMA_VERSION}); upgrade shotcap")


_TYPES = {**{c: "int" for c in ("start_frame", "end_frame", "num_frames", "width", "height")},
          **{c: "float" for c in ("start_sec", "end_sec", "fps", "aspect_ratio")}, **STAGE_COLUMNS}
_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _check_values(df: pd.DataFrame, path) -> pd.DataFrame:
    """Numbers and booleans of a hand-edited manifest: "5" becomes 5 and "false" False; a value that is
    neither is a one-line error (a kept "false" string would read as True and keep a duplicate)."""
    for col, kind in _TYPES.items():
        if col not in df.columns or kind not in ("int", "float", "bool") or df[col].dtype == bool:
            continue
        s = df[col]
        if kind == "bool":
            value = s.map(lambda v: v if isinstance(v, bool) or v is None or v != v else _BOOLS.get(str(v).lower()))
        else:
            value = pd.to_numeric(s, errors="coerce")
            if kind == "int":
                value = value.where(value == value.round())
        bad = s.notna() & value.isna()
        if bad.any():
            i = int(bad.to_numpy().argmax())
            want = {"int": "an integer", "float": "a number", "bool": "true or false"}[kind]
            raise ManifestError(f"{path}: column {col} holds {s.iloc[i]!r} (row {i}), not {want}")
        if not pd.api.types.is_numeric_dtype(s):  # strings (object or pandas' str dtype): the parsed values
            df[col] = value
    return df


def _row_problem(r) -> str | None:
    """What is wrong with one row's core values, or None: the ranges every stage relies on."""
    def num(col):
        v = r[col]
        return float(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else math.nan

    if not isinstance(r["clip_id"], str) or not r["clip_id"].strip():
        return f"clip_id is {r['clip_id']!r}, must be a non-empty text"
    if not isinstance(r["video_path"], str) or not r["video_path"].strip():
        return f"video_path is {r['video_path']!r}, must be a path"
    start, end, n = num("start_frame"), num("end_frame"), num("num_frames")
    if not start >= 0:
        return f"start_frame is {r['start_frame']!r}, must be >= 0"
    if not end > start:
        return f"end_frame is {r['end_frame']!r}, must be > start_frame ({r['start_frame']!r})"
    if n != end - start:
        return f"num_frames is {r['num_frames']!r}, must be end_frame - start_frame ({end - start:g})"
    for col in ("fps", "width", "height"):
        v = num(col)
        if not (math.isfinite(v) and v > 0):
            return f"{col} is {r[col]!r}, must be a positive number"
    s0, s1 = num("start_sec"), num("end_sec")
    if not (math.isfinite(s0) and s0 >= 0):
        return f"start_sec is {r['start_sec']!r}, must be a number >= 0"
    if not (math.isfinite(s1) and s1 > s0):
        return f"end_sec is {r['end_sec']!r}, must be a number > start_sec ({r['start_sec']!r})"
    return None


def check_rows(df: pd.DataFrame, path, stage: str) -> tuple[pd.DataFrame, list[dict]]:
    """The rows a stage can use, and a failure record (column, value, row) for each one it cannot: values out of
    range (a negative start_frame, a NaN fps, an empty range) and repeats of a clip_id already seen."""
    bad, fails = [], []
    seen: set = set()
    for i, r in enumerate(df[list(CORE_COLUMNS)].to_dict("records")):
        why = _row_problem(r)
        if why is None and r["clip_id"] in seen:
            why = "clip_id repeats an earlier row (a manifest holds each clip once)"
        if why is None:
            seen.add(r["clip_id"])
            continue
        bad.append(i)
        fails.append(failure(r["video_path"], stage, f"{path} row {i} (clip {r['clip_id']}): {why}"))
    if not bad:
        return df, []
    return df.drop(df.index[bad]).reset_index(drop=True), fails


def load_manifest(path, stage: str) -> tuple[pd.DataFrame, list[dict]]:
    """`read_manifest` then `check_rows`: a stage's input, and the failures of the rows it cannot use."""
    return check_rows(read_manifest(path), path, stage)


def export_manifest(df: pd.DataFrame, path):
    """Export to .jsonl or .csv (Parquet stays the truth)."""
    path = storage.location(path)
    if path.suffix == ".jsonl":
        return storage.write_text(path, df.to_json(orient="records", lines=True, force_ascii=False))
    if path.suffix == ".csv":
        return storage.write_text(path, df.to_csv(index=False))
    raise ManifestError(f"{path}: export to .jsonl or .csv")


def run_cli(prog: str, main, argv=None) -> int:
    """Run a stage's main; a full disk or an unwritable folder (OSError while writing our output) is one
    error line and exit status 2, and what was finished stays on disk for the re-run. Ctrl-C is one line and
    exit status 130; a folder locked by another run is one line and exit status 2."""
    with ctrl_c_guard(argv):
        try:
            return main(argv)
        except Interrupted as e:
            ignore_ctrl_c()
            print(f"{prog}: interrupted: {e}; run the same command again to resume", file=sys.stderr)
            return 130
        except KeyboardInterrupt:
            ignore_ctrl_c()
            print(f"{prog}: interrupted before any work was finished; nothing to resume", file=sys.stderr)
            return 130
        except UsageError as e:  # commands catch their own; this one line is the fallback (a locked folder)
            print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        except OSError as e:  # reading an input went through its own checks: this is mostly our output
            if type(e).__module__.split(".")[0] == "av":  # PyAV's errors subclass OSError: a decoder we misused
                raise
            where = f": {e.filename}" if e.filename else ""
            print(f"{prog}: error: cannot read or write a file ({e.strerror or e}){where}", file=sys.stderr)
            return 2


# ---------------------------------------------------------------- failures and provenance

def add_retry_arg(parser) -> None:
    """`--retry-failed` for a stage command whose re-runs skip failed units."""
    parser.add_argument("--retry-failed", action="store_true",
                        help="try the units recorded in failed.jsonl again (a crash or a file being copied; "
                             "a re-run skips them otherwise)")


def write_failed(out_dir, failures) -> object:
    """OUT_DIR/failed.jsonl from failure records (a list or any iterable: written as it is read)."""
    loc = storage.location(out_dir) / FAILED_NAME
    local = temp_file_for(loc)
    try:
        with open(local, "w", encoding="utf-8") as f:
            for rec in failures:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return storage.upload(local, loc)
    finally:
        if os.path.exists(local):
            os.unlink(local)


def read_failed(out_dir) -> list[dict]:
    p = storage.location(out_dir) / FAILED_NAME
    try:
        text = storage.read_text(p)
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_provenance(out_dir, stage: str, options: dict, source=None):
    """OUT_DIR/provenance.json: the steps that made this folder's manifest, in order (the input folder's steps,
    then this one: stage, output folder, options), so a data card can say how its data was made."""
    steps = read_provenance(source) if source is not None else []
    loc = storage.location(out_dir)
    out = str(loc) if storage.is_remote(loc) else str(loc.resolve())
    steps = [s for s in steps if s.get("out") != out]  # a re-run into the same folder replaces its own step
    steps.append({"stage": stage, "out": out, "options": options})
    return storage.write_text(loc / PROVENANCE_NAME, json.dumps({"steps": steps}, indent=2, default=str))


def read_provenance(source) -> list[dict]:
    """The steps recorded beside a manifest (a manifest file or dataset folder, or its folder); [] when none."""
    try:
        folder = manifest_folder(source)
        steps = json.loads(storage.read_text(folder / PROVENANCE_NAME))["steps"]
        return [s for s in steps if isinstance(s, dict)]
    except (OSError, ValueError, KeyError, TypeError):
        return []
