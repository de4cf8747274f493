"""Manifest I/O: Parquet with a schema version, atomic writes, resumable per-unit parts, failed.jsonl.

A stage processes units (a source video, a group of clips) and writes one part file per finished unit
with `PartStore`. A re-run skips finished units, and the final manifest is the sorted merge of all parts,
so a kill at any point followed by a re-run gives the same manifest as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .engine import BadInput, Interrupted, UsageError, ctrl_c_guard, ignore_ctrl_c
from .files import atomic_write_bytes, atomic_write_text
from .record import CORE_COLUMNS, SCHEMA_VERSION, STAGE_COLUMNS

META_KEY = b"shotcap.schema_version"
FAILED_NAME = "failed.jsonl"
PROVENANCE_NAME = "provenance.json"
# Columns anyone may add without registering them (scores, user metadata).
FREE_PREFIXES = ("score_", "meta_", "x_")


class ManifestError(UsageError):
    """A manifest that cannot be used, with a one-line reason."""


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


def write_manifest(df: pd.DataFrame, path) -> Path:
    """Write a manifest atomically as Parquet, with the schema version in the file metadata.
    Each clip is on one row: a repeated `clip_id` is a bug of the stage that made the frame, and stops it."""
    _check_columns(df.columns, path)
    repeated = df["clip_id"][df["clip_id"].duplicated()]
    if len(repeated):
        raise RuntimeError(f"{path}: clip_id {repeated.iloc[0]} on more than one row ({len(repeated)} repeats); "
                           "a manifest holds each clip once")
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = str(SCHEMA_VERSION).encode()
    table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_manifest(path) -> pd.DataFrame:
    """Read a manifest (.parquet, .jsonl or .csv) and check it; clear one-line errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: no such manifest")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            df = pd.read_json(path, lines=True)
        elif suffix == ".csv":
            df = pd.read_csv(path)
        else:
            table = pq.read_table(path)
            version = (table.schema.metadata or {}).get(META_KEY)
            if version is not None and int(version) > SCHEMA_VERSION:
                raise ManifestError(f"{path}: schema version {int(version)} is newer than this "
                                    f"shotcap's ({SCHEMA_VERSION}); upgrade shotcap")
            df = table.to_pandas()
    except ManifestError:
        raise
    except Exception as e:  # pyarrow / pandas raise many types for a malformed file
        raise ManifestError(f"{path}: cannot read manifest ({type(e).__name__}: {str(e)[:200]})") from None
    _check_columns(df.columns, path)
    return _check_values(df, path)


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


def check_sources(df: pd.DataFrame, hashes, stage: str) -> tuple[pd.DataFrame, list[dict]]:
    """The rows whose source file still holds the content they were made from (`hashes`: an
    `index.files.HashCache`, so an unchanged file costs a stat), and one failure per missing, unreadable or
    replaced source: a caption or score of other content must never reach the shards."""
    bad: set = set()
    fails = []
    for (path, sha), rows in df.groupby(["video_path", "video_sha256"], sort=True, dropna=False):
        try:
            if not Path(path).exists():
                raise BadInput("video missing")
            if hashes.sha256(path) != sha:
                raise BadInput("video changed since it was split (sha256 mismatch)")
        except BadInput as e:
            bad.update(rows.index)
            fails.append(failure(path, stage, f"{len(rows)} clips: {e}"))
    return (df.drop(index=sorted(bad)) if bad else df), fails


def clip_set_units(df: pd.DataFrame, store: "PartStore", salt: str = "") -> list:
    """One `Unit` per source video holding its clips that `store` has not done yet, so a unit's key covers its
    clip set: a manifest of more clips of a source done before (a subset first, the whole later) redoes only
    the new clips. `unit.data` is the rows (dicts, in frame order); `salt`: anything else the output depends on."""
    import hashlib

    from .engine import Unit

    done = store.done_ids()
    units = []
    for (path, sha), rows in df.groupby(["video_path", "video_sha256"], sort=True, dropna=False):
        todo = rows[~rows["clip_id"].isin(done)].sort_values(["start_frame", "clip_id"], kind="stable")
        if not len(todo):
            continue
        ids = tuple(str(c) for c in todo["clip_id"])
        key = hashlib.sha256("\n".join([salt, str(sha), *sorted(ids)]).encode()).hexdigest()[:32]
        units.append(Unit(key, str(path), data=todo.to_dict("records"), weight=len(ids), ids=ids))
    return units


def join_columns(df: pd.DataFrame, parts: pd.DataFrame, columns) -> pd.DataFrame:
    """A stage's output: the input rows (in their order) that have a part row, with the stage's `columns` from
    the parts (replacing the input's own copies of those columns; no other column is touched)."""
    cols = [c for c in columns if c in parts.columns]
    base = df.drop(columns=[c for c in cols if c in df.columns])
    if not len(parts):
        return base.iloc[:0].assign(**{c: pd.Series(dtype=object) for c in cols})
    return base.merge(parts[["clip_id", *cols]], on="clip_id", how="inner", validate="one_to_one")


def export_manifest(df: pd.DataFrame, path) -> Path:
    """Export to .jsonl or .csv (Parquet stays the truth)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return atomic_write_text(path, df.to_json(orient="records", lines=True, force_ascii=False))
    if path.suffix == ".csv":
        return atomic_write_text(path, df.to_csv(index=False))
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


# ---------------------------------------------------------------- failures

def display_path(path) -> str:
    """A path as text that can always be written (a file name that is not valid UTF-8 shows its bytes as \\xNN)."""
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def failure(path, stage: str, reason: str) -> dict:
    reason = " ".join(str(reason).split())[:300]  # always one line
    return {"path": display_path(path), "stage": stage, "reason": reason}


def add_retry_arg(parser) -> None:
    """`--retry-failed` for a stage command whose re-runs skip failed units."""
    parser.add_argument("--retry-failed", action="store_true",
                        help="try the units recorded in failed.jsonl again (a crash or a file being copied; "
                             "a re-run skips them otherwise)")


def write_failed(out_dir, failures: list[dict]) -> Path:
    lines = "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in failures)
    return atomic_write_text(Path(out_dir) / FAILED_NAME, lines)


def read_failed(out_dir) -> list[dict]:
    p = Path(out_dir) / FAILED_NAME
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_provenance(out_dir, stage: str, options: dict, source=None) -> Path:
    """OUT_DIR/provenance.json: the steps that made this folder's manifest, in order (the input folder's steps,
    then this one: stage, output folder, options), so a data card can say how its data was made."""
    steps = read_provenance(source) if source is not None else []
    out = str(Path(out_dir).resolve())
    steps = [s for s in steps if s.get("out") != out]  # a re-run into the same folder replaces its own step
    steps.append({"stage": stage, "out": out, "options": options})
    return atomic_write_text(Path(out_dir) / PROVENANCE_NAME, json.dumps({"steps": steps}, indent=2, default=str))


def read_provenance(source) -> list[dict]:
    """The steps recorded beside a manifest (a manifest file or its folder); [] when none were."""
    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    try:
        steps = json.loads((folder / PROVENANCE_NAME).read_text(encoding="utf-8"))["steps"]
        return [s for s in steps if isinstance(s, dict)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


# ---------------------------------------------------------------- resumable parts

class PartStore:
    """One part file per finished unit under OUT_DIR/.parts/STAGE/, written by the driver only.

    `key` must be filesystem-safe (a hex hash) and derived from everything the unit's output depends on. `config`
    (options that change the output) is stored on first use; a re-run with different options is refused instead
    of mixing outputs. A failed unit counts as done (a re-run does not try it again) unless `retry_failed`.
    A failure may name the clip ids it covers (`ids`), so stages whose units are clip sets can tell which clips
    are done: `done_ids`.
    """

    def __init__(self, out_dir, stage: str, config: dict | None = None, retry_failed: bool = False):
        self.dir = Path(out_dir) / ".parts" / stage
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stage = stage
        self.retry_failed = retry_failed
        if config is not None:
            cfg_path = self.dir / "config.json"
            text = json.dumps(config, sort_keys=True, default=str)
            if cfg_path.exists() and cfg_path.read_text() != text:
                old = json.loads(cfg_path.read_text())
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != json.loads(text).get(k))
                raise ManifestError(f"{out_dir} holds a {stage} run made with other options "
                                    f"({', '.join(diff)}); use a new output folder or delete it")
            if not cfg_path.exists():
                atomic_write_text(cfg_path, text)

    def _part(self, key: str) -> Path:
        return self.dir / f"{key}.parquet"

    def _fail(self, key: str) -> Path:
        return self.dir / f"{key}.failed.json"

    def done(self, key: str) -> bool:
        return self._part(key).exists() or (not self.retry_failed and self._fail(key).exists())

    def write(self, key: str, df: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(self._part(key), sink.getvalue().to_pybytes())
        self._fail(key).unlink(missing_ok=True)

    def fail(self, key: str, path, reason: str, ids=()) -> dict:
        rec = failure(path, self.stage, reason)
        atomic_write_text(self._fail(key), json.dumps({**rec, "ids": [str(i) for i in ids]}, ensure_ascii=False))
        return rec

    def keys(self) -> set[str]:
        return {p.name.split(".")[0] for p in self.dir.glob("*.parquet")}

    def _failures(self) -> list[tuple[str, dict]]:
        return [(p.name.split(".")[0], json.loads(p.read_text(encoding="utf-8")))
                for p in sorted(self.dir.glob("*.failed.json"))]

    def done_ids(self, column: str = "clip_id") -> set:
        """Ids in the parts (and, unless `retry_failed`, in the failures): what a clip-set stage need not redo."""
        files = sorted(self.dir.glob("*.parquet"))
        ids = set()
        if files:
            ids = set(_dataset(files, [column]).column(column).to_pylist()) if files else set()
        if not self.retry_failed:
            for _, rec in self._failures():
                ids.update(rec.get("ids", ()))
        return ids

    def merge(self, sort_by=("video_path", "start_frame"), keys=None, ids=None) -> tuple[pd.DataFrame, list[dict]]:
        """All parts as one sorted frame, and the failure records, read with pyarrow.dataset (threaded).
        `keys`: only those units' parts (a record named KEY-SUFFIX, a failure of one item of unit KEY, belongs to
        KEY); `ids`: only rows (and failures) of those clip ids, each clip once (the first part in name order).
        The other parts stay on disk, so a unit that comes back is not redone."""
        def wanted(p: Path) -> bool:
            stem = p.name.split(".")[0]
            return keys is None or stem in keys or stem.rsplit("-", 1)[0] in keys

        files = [p for p in sorted(self.dir.glob("*.parquet")) if wanted(p)]
        table = _dataset(files) if files else None
        if table is not None and ids is not None:
            import pyarrow.compute as pc

            col = table.column("clip_id")
            table = table.filter(pc.is_in(col, value_set=pa.array(list(ids), type=col.type)))
        # self_destruct: each column's Arrow buffers are freed as it is converted (peak memory ~ one copy, not two)
        df = (table.to_pandas(self_destruct=True, split_blocks=True) if table is not None
              else pd.DataFrame(columns=list(CORE_COLUMNS)))
        table = None
        if ids is not None and len(df):
            df = df.drop_duplicates("clip_id", keep="first")
        order = [c for c in sort_by if c in df.columns]
        if order and len(df):
            df = df.sort_values(order, kind="stable")
        df = df.reset_index(drop=True)
        fails = []
        done = set(df["clip_id"]) if ids is not None and len(df) else set()
        for stem, rec in self._failures():
            if not (keys is None or stem in keys or stem.rsplit("-", 1)[0] in keys):
                continue
            if ids is not None and rec.get("ids") and not (set(rec["ids"]) & ids) - done:
                continue  # none of its clips is wanted, or they all succeeded since (a retry, another clip set)
            fails.append({k: v for k, v in rec.items() if k != "ids"})
        fails.sort(key=lambda r: (r["path"], r["reason"]))
        return df, fails


def _dataset(files: list[Path], columns=None) -> pa.Table:
    """Parquet parts as one table, threaded; parts whose columns differ (a column all null in one part, an int
    in one and a float in another) are read under their unified schema."""
    import pyarrow.dataset as ds

    schemas = [pq.read_schema(f).remove_metadata() for f in files]
    schema = schemas[0] if all(s == schemas[0] for s in schemas) else pa.unify_schemas(
        schemas, promote_options="permissive")
    # pre_buffer off: parts are small, and buffering each whole file ahead only raised the peak memory (measured)
    fmt = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False))
    return ds.dataset([str(f) for f in files], schema=schema, format=fmt).to_table(columns=columns, use_threads=True)
