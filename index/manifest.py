"""Manifest I/O: Parquet with a schema version, atomic writes, resumable per-unit parts, failed.jsonl.

A stage processes units (a source video, a group of clips) and writes one part file per finished unit
with `PartStore`. A re-run skips finished units, and the final manifest is the sorted merge of all parts,
so a kill at any point followed by a re-run gives the same manifest as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .record import CORE_COLUMNS, SCHEMA_VERSION, STAGE_COLUMNS

META_KEY = b"shotcap.schema_version"
FAILED_NAME = "failed.jsonl"
# Columns anyone may add without registering them (scores, user metadata).
FREE_PREFIXES = ("score_", "meta_", "x_")


class ManifestError(ValueError):
    """A manifest that cannot be used, with a one-line reason."""


# ---------------------------------------------------------------- atomic writes

_UMASK = os.umask(0)
os.umask(_UMASK)

def atomic_write_bytes(path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600: outputs get the modes of a plain open()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


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
    """Write a manifest atomically as Parquet, with the schema version in the file metadata."""
    _check_columns(df.columns, path)
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
    error line and exit status 2, and what was finished stays on disk for the re-run."""
    try:
        return main(argv)
    except OSError as e:  # reading an input went through its own checks: this is mostly our output
        where = f": {e.filename}" if e.filename else ""
        print(f"{prog}: error: cannot read or write a file ({e.strerror or e}){where}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------- failures

def failure(path, stage: str, reason: str) -> dict:
    reason = " ".join(str(reason).split())[:300]  # always one line
    return {"path": str(path), "stage": stage, "reason": reason}


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


# ---------------------------------------------------------------- resumable parts

class PartStore:
    """One part file per finished unit under OUT_DIR/.parts/STAGE/.

    `key` must be filesystem-safe (a hex hash). `config` (options that change the output) is stored
    on first use; a re-run with different options is refused instead of mixing outputs. A failed unit
    counts as done (a re-run does not try it again) unless `retry_failed`.
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

    def fail(self, key: str, path, reason: str) -> dict:
        rec = failure(path, self.stage, reason)
        atomic_write_text(self._fail(key), json.dumps(rec, ensure_ascii=False))
        return rec

    def keys(self) -> set[str]:
        return {p.name.split(".")[0] for p in self.dir.glob("*.parquet")}

    def merge(self, sort_by=("video_path", "start_frame"), keys=None) -> tuple[pd.DataFrame, list[dict]]:
        """All parts as one sorted frame, and the failure records; with `keys`, only those units' (a record
        named KEY-SUFFIX, a failure of one item of a unit, belongs to unit KEY). The other parts stay on
        disk, so a unit that comes back is not redone."""
        def wanted(p: Path) -> bool:
            stem = p.name.split(".")[0]
            return keys is None or stem in keys or stem.rsplit("-", 1)[0] in keys

        frames = [pd.read_parquet(p) for p in sorted(self.dir.glob("*.parquet")) if wanted(p)]
        frames = [f for f in frames if len(f)]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(CORE_COLUMNS))
        order = [c for c in sort_by if c in df.columns]
        if order and len(df):
            df = df.sort_values(order, kind="stable").reset_index(drop=True)
        fails = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(self.dir.glob("*.failed.json"))
                 if wanted(p)]
        fails.sort(key=lambda r: (r["path"], r["reason"]))
        return df, fails
