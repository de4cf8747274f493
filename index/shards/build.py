"""`build-shards`: choose the clips, cut them, and write them in a training format, resumably.

SHARDS_DIR after a build:
  the format's files     see index/shards/formats/ (tars, or videos/ with list files and TOMLs, or clips/ + CSV)
  index.parquet          one row per clip: clip_id, key, file (+ shard, offset, size for tars), bucket, the clip_*
                         values of the written clip, and the manifest columns (scores included)
  failed.jsonl           rows that could not be used (out of range, no caption, missing or changed source, ...)
  DATA_CARD.md, card/    see card.py
  index/                 the dedup index build-shards made when none was given (see cli.py)
  .shotcap/              the lock, source hashes, and shards.json: the format, clip options and every file an
                         earlier run wrote (what a re-run may replace or delete: nothing else is touched)

Steps, each resumable: choose the clips (select.py, SQL over the streamed manifest), cut those neither staged nor
already in the output on the engine (stage.py: one decode per source, SHARDS_DIR/.staging/KEY.mp4, each complete or
absent), then the writer places them, streaming the clip set in record batches, and index.parquet is written from
its batches: no step holds the manifest or the index. What stays per clip in memory is small and named: shards.json
(one name per file of the output) with one listing of each output folder, and the failure records. SHARDS_DIR may be
a folder or a URL (s3://...): every path goes through `index.storage`, and on a store each file is an object that
appears only when complete.

Before the writer writes a file it is added to shards.json, so a run killed at any point leaves
only files the next run recognises as its own; files of an earlier plan that the new output does not list are
removed. Encoding is single-threaded (see index.video), so the same inputs give the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import query, storage
from ..files import STATE_DIR, HashCache, remove_own_temps
from ..manifest import ManifestError, ManifestWriter, manifest_files, write_failed
from .formats import WRITERS, Context
from .names import bucket_of, parse_size, safe_key  # noqa: F401  (parse_size: part of this module's API)
from .select import STAGE, HOURS, Selection, Step, select_clips
from .stage import ClipOptions, plan_clip, stage_clips

STATE_FILE = "shards.json"
COMMON_FILES = ("index.parquet", "failed.jsonl", "DATA_CARD.md")


class ShardsError(ValueError):
    """A build that cannot start as asked (an output folder holding another export): one line, exit 2."""


@dataclass
class ShardReport:
    out_dir: object
    format: str = "webdataset"
    samples: int = 0
    hours: float = 0.0
    files: list = field(default_factory=list)  # the output's files (relative)
    shards: list = field(default_factory=list)  # webdataset: the tar names
    failures: list = field(default_factory=list)
    selection: Selection | None = None
    unfit: list = field(default_factory=list)  # (clip_id, reason): clips the clip options cannot make
    clip_options: ClipOptions = field(default_factory=ClipOptions)
    _index: pd.DataFrame | None = None

    @property
    def dropped(self) -> dict[str, int]:
        return self.selection.dropped() if self.selection is not None else {}

    @property
    def index_path(self):
        return storage.location(self.out_dir) / "index.parquet"

    @property
    def index(self) -> pd.DataFrame:
        """index.parquet in memory: for small builds and tests (the card and the build read it with SQL)."""
        if self._index is None:
            with storage.open_read(self.index_path) as f:
                self._index = pq.read_table(f).to_pandas()
        return self._index


# ---------------------------------------------------------------- what an earlier run wrote

def read_state(out_dir) -> dict:
    """shards.json of an earlier run ({} when none). Folders written before shards.json existed: their
    index.parquet names the shards."""
    out = storage.location(out_dir)
    try:
        state = json.loads(storage.read_text(out / STATE_DIR / STATE_FILE))
        if isinstance(state, dict) and isinstance(state.get("files"), list):
            return state
    except (OSError, ValueError):
        pass
    try:
        with storage.open_read(out / "index.parquet") as f:
            shards = pq.read_table(f, columns=["shard"]).column("shard").to_pylist()
        return {"format": "webdataset", "clip_options": ClipOptions().describe(),
                "files": sorted({str(s) for s in shards if s is not None})}
    except Exception:  # no index, or one without shards: nothing of ours to recognise
        return {}


def write_state(out_dir, fmt: str, opts: ClipOptions, files) -> None:
    state = {"format": fmt, "clip_options": opts.describe(), "files": sorted(set(files))}
    storage.write_text(storage.location(out_dir) / STATE_DIR / STATE_FILE, json.dumps(state, indent=1))


class Names:
    """What is in the output's folders (files, links, folders), one listing per folder, for files named relative
    to the output: whether a file of a list is there costs no request of its own."""

    def __init__(self, out_dir):
        self.out, self.folders = storage.location(out_dir), {}

    def __contains__(self, rel: str) -> bool:
        folder, _, name = rel.rpartition("/")
        if folder not in self.folders:
            loc = self.out / folder if folder else self.out
            if storage.is_remote(loc):
                self.folders[folder] = set(storage.listing(loc))
            else:
                try:
                    self.folders[folder] = set(os.listdir(loc))
                except (FileNotFoundError, NotADirectoryError):
                    self.folders[folder] = set()
        return name in self.folders[folder]


def check_output(out_dir, fmt: str, opts: ClipOptions) -> dict:
    """The earlier run's state; ShardsError when the folder holds an export of another format or clip options
    (mixing them would leave clips made two ways). Cheap: called before any work."""
    if fmt not in WRITERS:
        raise ShardsError(f"unknown format {fmt!r} ({', '.join(WRITERS)})")
    state = read_state(out_dir)
    names = Names(out_dir)
    if not state or not any(f in names for f in state["files"]):
        return state
    old = (state.get("format"), state.get("clip_options"))
    if old != (fmt, opts.describe()):
        what = f"a {old[0]} export" if old[0] != fmt else f"clips made with other clip options ({old[1]})"
        raise ShardsError(f"{out_dir} holds {what}; use another output folder, or delete it first")
    return state


# ---------------------------------------------------------------- the input

def open_input(con, manifest, source: str | None = None, stack=None):
    """The manifest as an `index.query.Input` in `con`: a path or URL (streamed), or a small DataFrame (tests, a
    caller's own rows: written to a private temporary Parquet file first, removed by `stack`)."""
    if isinstance(manifest, query.Input):
        return manifest
    if not isinstance(manifest, pd.DataFrame):
        return query.Input(con, manifest, STAGE)
    tmp = tempfile.mkdtemp(prefix="shotcap-shards-")
    stack.callback(shutil.rmtree, tmp, True)
    path = os.path.join(tmp, "manifest.parquet")
    pq.write_table(pa.Table.from_pandas(manifest.reset_index(drop=True), preserve_index=False), path)
    inp = query.Input(con, path, STAGE)
    label = source or "manifest"
    for f in inp.failures:  # the rows are the caller's: name them as the caller does
        f["reason"] = f["reason"].replace(path, label, 1)
    return inp


# ---------------------------------------------------------------- the build

def build_shards(manifest, out_dir, index_dir=None, dedup: bool = True, shard_size: int = 10**9,
                 fmt: str = "webdataset", engine=None, where=None, keep_tops=(), allow_flags=(),
                 clip_options: ClipOptions | None = None, failures=(), source: str | None = None,
                 hashes_also=(), require_indexed: bool | None = None, rehash: bool = False) -> ShardReport:
    """The whole build (the caller holds `index.files.OutputLock` on `out_dir`). `manifest`: a path or URL, an
    `index.query.Input` already opened (its connection is used), or a small DataFrame.

    Dedup uses `index_dir` (an index-clips folder) or, without one, the manifest's own `dup_group`/`keep` columns;
    `where` is a parsed `where.Node`, `keep_tops` [(column, fraction)]; `failures`: rows refused before (recorded
    again in failed.jsonl); `engine`: `index.engine.EngineOptions` for the cutting."""
    out_dir = storage.location(out_dir)
    opts = clip_options or ClipOptions()
    state = check_output(out_dir, fmt, opts)
    storage.makedirs(out_dir)
    writer = WRITERS[fmt]()
    staging = out_dir / ".staging"
    folders = [out_dir, staging] + ([out_dir / writer.media] if writer.media else [])
    remove_own_temps(*folders)
    with contextlib.ExitStack() as stack:
        if isinstance(manifest, query.Input):
            con = manifest.con
        else:
            con = stack.enter_context(query.connect())
        inp = open_input(con, manifest, source, stack)
        try:
            return _build(con, inp, out_dir, writer, state, index_dir, dedup, shard_size, engine, where, keep_tops,
                          allow_flags, opts, failures, source or "manifest", hashes_also, require_indexed, rehash)
        except BaseException:
            remove_own_temps(*folders)  # an interrupted write leaves nothing behind
            raise


def _dedup_table(con, inp, index_dir) -> str | None:
    """A relation of clip_id, dup_group, keep (+ x_batch, x_frame_hash) to dedup with, or None."""
    if index_dir is not None:
        path = storage.location(index_dir) / "clips.parquet"
        if not storage.exists(path):
            raise ShardsError(f"{index_dir}: not an index folder (no clips.parquet); run index-clips first")
        rel = query.files_sql(con, manifest_files(path))
        names = query.names_of(con, f"SELECT * FROM {rel}")
        if "keep" not in names or "dup_group" not in names:
            raise ShardsError(f"{path}: has no dedup columns; re-run index-clips")
        cols = [c for c in ("clip_id", "dup_group", "keep", "x_batch", "x_frame_hash") if c in names]
        return f"(SELECT {', '.join(query.ident(c) for c in cols)} FROM {rel})"
    if "dup_group" in inp.columns and "keep" in inp.columns:
        return "(SELECT clip_id, dup_group, keep FROM input ORDER BY _row)"
    return None


def _plan(con, sel: Selection, opts: ClipOptions, report: ShardReport) -> None:
    """`_plan`: each clip left, its key, the written clip's values, its bucket and the reason it cannot meet the
    clip options (NULL: it can), computed a record batch at a time."""
    con.execute("CREATE OR REPLACE TABLE _plan (_row BIGINT, key VARCHAR, clip_num_frames BIGINT, clip_fps DOUBLE, "
                "clip_width BIGINT, clip_height BIGINT, bucket VARCHAR, _unfit VARCHAR)")
    cols = "_row, clip_id, start_frame, end_frame, start_sec, end_sec, fps, width, height"
    for batch in query.batches(con, f"SELECT {cols} FROM {sel.rows()} ORDER BY _row", rows=8192):
        out = {c: [] for c in ("_row", "key", "clip_num_frames", "clip_fps", "clip_width", "clip_height", "bucket",
                               "_unfit")}
        for row in batch.to_pylist():
            plan = plan_clip(row, opts)
            fit = not isinstance(plan, str)
            if not fit:
                report.unfit.append((row["clip_id"], plan))
            if fit:
                values = (round(plan.fps, 6), plan.width, plan.height,
                          bucket_of(plan.width, plan.height, plan.num_frames), None)
                values = (row["_row"], safe_key(row["clip_id"]), plan.num_frames, *values)
            else:
                values = (row["_row"], safe_key(row["clip_id"]), None, None, None, None, None, plan)
            for c, v in zip(out, values):
                out[c].append(v)
        query.arrow(con, "_plan_part", pa.table(out))
        con.execute("INSERT INTO _plan SELECT * FROM _plan_part")


def _staged_table(con, staging) -> None:
    files = {n[:-4]: i.get("size") for n, i in storage.listing(staging).items()
             if n.endswith(".mp4") and not n.startswith(".") and i.get("type") == "file"}
    query.arrow(con, "_staged", pa.table({"key": pa.array(list(files), pa.string()),
                                          "size": pa.array([int(v or 0) for v in files.values()], pa.int64())}))


def _build(con, inp, out_dir, writer, state: dict, index_dir, dedup, shard_size, engine, where, keep_tops,
           allow_flags, opts: ClipOptions, failures, source, hashes_also, require_indexed, rehash) -> ShardReport:
    report = ShardReport(out_dir, format=writer.name, clip_options=opts)
    table = _dedup_table(con, inp, index_dir) if dedup else None
    sel = select_clips(con, inp, source, allow_flags, where, keep_tops, table,
                       bool(index_dir is not None if require_indexed is None else require_indexed), failures)
    report.selection = sel
    _plan(con, sel, opts, report)
    sel.add(con, "unfit", "cannot meet the clip options",
            f"SELECT p._row FROM _plan p SEMI JOIN {sel.table} s ON p._row = s._row WHERE p._unfit IS NULL")

    staging = out_dir / ".staging"
    ctx = Context(out_dir, staging, own=set(state.get("files", [])), shard_size=shard_size,
                  clip_columns=opts.active(), con=con)
    held = writer.held(ctx)
    query.arrow(con, "_held", held)
    _staged_table(con, staging)
    keyed = f"(SELECT i.*, p.key FROM {sel.rows()} i JOIN _plan p USING (_row))"
    con.execute(f"CREATE OR REPLACE VIEW _todo AS SELECT * FROM {keyed} WHERE key NOT IN (SELECT key FROM _held) "
                "AND key NOT IN (SELECT key FROM _staged)")
    with HashCache(out_dir, also=hashes_also, rehash=rehash) as hashes:
        _, cut_failures = stage_clips(con, "_todo", opts, out_dir, staging, hashes, engine)
    sel.failures += cut_failures
    _staged_table(con, staging)
    sel.add(con, "failed", "sources that could not be cut (missing, changed, undecodable)",
            f"SELECT p._row FROM _plan p SEMI JOIN {sel.table} s ON p._row = s._row WHERE p.key IN "
            "(SELECT key FROM _held UNION ALL SELECT key FROM _staged)")

    held_cols = ", h.shard AS _held_shard, h.\"offset\" AS _held_offset" if "shard" in held.column_names else ""
    con.execute(f"CREATE OR REPLACE VIEW _clips AS SELECT i.* EXCLUDE (_row), p.key, p.clip_num_frames, p.clip_fps, "
                f"p.clip_width, p.clip_height, p.bucket, st.key IS NOT NULL AS _staged, "
                f"coalesce(st.size, h.size) AS _size{held_cols}, i._row FROM {sel.rows()} i JOIN _plan p USING (_row) "
                "LEFT JOIN _staged st ON st.key = p.key LEFT JOIN _held h ON h.key = p.key")
    ctx.clips = "_clips"
    del held
    _write(writer, ctx, opts, report)
    _clear_staging(con, staging)
    write_failed(out_dir, sel.failures)
    report.failures = sel.failures
    return report


def _clear_staging(con, staging) -> None:
    """Staged clips of this manifest are copies now: the output holds them (a staged clip of another manifest,
    cut by a run on another clip set, stays). Deleted in the listing's order: on disk, unlinking a large folder's
    files in name order instead costs several times as long."""
    listed = [n[:-4] for n, i in storage.listing(staging).items() if n.endswith(".mp4") and i.get("type") == "file"]
    left, ours = set(listed), set()
    if left:
        for batch in query.batches(con, "SELECT clip_id FROM input"):
            ours |= left & {safe_key(c) for c in batch.column(0).to_pylist()}
        storage.remove_many([staging / f"{k}.mp4" for k in listed if k in ours])
    if not storage.is_remote(staging) and staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()


FRONT = ("clip_id", "key", "file", "shard", "offset", "size", "bucket")


def _write(writer, ctx: Context, opts: ClipOptions, report: ShardReport) -> None:
    """The writer's output and index.parquet, with shards.json naming every file before it is written, and the
    files of an earlier run that the new output does not list removed afterwards."""
    claimed = set(ctx.own)
    names = Names(ctx.out_dir)

    def claim(files) -> None:
        new = set(files) - claimed
        foreign = sorted(f for f in new if f in names)
        if foreign:
            raise ShardsError(f"{ctx.out_dir / foreign[0]} exists and was not written by build-shards; "
                              "move it away or use another output folder")
        if new:
            claimed.update(new)
            write_state(ctx.out_dir, writer.name, opts, claimed)

    ctx.claim = claim
    claim(writer.fixed_files())
    path = ctx.out_dir / "index.parquet"
    with ManifestWriter(path, rows_per_file=1 << 62, check=False) as w:
        for t in writer.write(ctx):
            front = [c for c in FRONT if c in t.column_names]
            w.write(t.select(front + [c for c in t.column_names if c not in front]))
        if not w.rows and w._schema is None:  # no clip: an index with the clip set's columns
            t = ctx.con.sql(f"SELECT * FROM {ctx.clips} LIMIT 0").arrow().read_all()
            t = t.select([c for c in t.column_names if not c.startswith("_")])
            w.write(t.append_column("file", pa.array([], pa.string())))
    con = ctx.con
    index = query.files_sql(con, [path])
    writer.finish(ctx, index)
    files = writer.files(con, index)
    for stale in sorted(claimed - set(files)):
        p = ctx.out_dir / stale
        if storage.is_remote(p):
            storage.remove(p)
        elif p.is_file() or p.is_symlink():
            p.unlink()
    write_state(ctx.out_dir, writer.name, opts, files)
    report.samples, report.hours = con.execute(f"SELECT count(*), {HOURS} FROM {index}").fetchall()[0]
    report.samples, report.hours = int(report.samples), float(report.hours)
    report.files = files
    report.shards = files if writer.name == "webdataset" else []


def flag_summary(sel: Selection) -> str:
    """'truncated 2, refusal 1 dropped; loop 1 kept' for the summary line."""
    dropped = ", ".join(f"{f} {c['dropped']}" for f, c in sorted(sel.flags.items()) if c["dropped"])
    kept = ", ".join(f"{f} {c['kept']}" for f, c in sorted(sel.flags.items()) if c["kept"])
    return "; ".join(p for p in (f"{dropped} dropped" if dropped else "", f"{kept} kept" if kept else "") if p)


__all__ = ["ManifestError", "ShardReport", "ShardsError", "Step", "build_shards", "check_output", "open_input",
           "read_state", "STAGE"]
