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

Steps, each resumable: choose the clips (select.py), cut those neither staged nor already in the output on the
engine (stage.py: one decode per source, SHARDS_DIR/.staging/KEY.mp4, each complete or absent), then the writer
places them. Before the writer writes a file it is added to shards.json, so a run killed at any point leaves
only files the next run recognises as its own; files of an earlier plan that the new output does not list are
removed. Encoding is single-threaded (see index.video), so the same inputs give the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..files import STATE_DIR, HashCache, atomic_write_bytes, atomic_write_text, remove_own_temps
from ..manifest import write_failed
from .formats import WRITERS, Context
from .names import bucket_of, parse_size, safe_key  # noqa: F401  (parse_size: part of this module's API)
from .select import STAGE, Selection, Step, hours, select_clips
from .stage import ClipOptions, plan_clip, stage_clips

STATE_FILE = "shards.json"
COMMON_FILES = ("index.parquet", "failed.jsonl", "DATA_CARD.md")


class ShardsError(ValueError):
    """A build that cannot start as asked (an output folder holding another export): one line, exit 2."""


@dataclass
class ShardReport:
    out_dir: Path
    format: str = "webdataset"
    samples: int = 0
    files: list = field(default_factory=list)  # the output's files (relative)
    shards: list = field(default_factory=list)  # webdataset: the tar names
    failures: list = field(default_factory=list)
    selection: Selection | None = None
    unfit: list = field(default_factory=list)  # (clip_id, reason): clips the clip options cannot make
    index: pd.DataFrame | None = None
    clip_options: ClipOptions = field(default_factory=ClipOptions)

    @property
    def dropped(self) -> dict[str, int]:
        return self.selection.dropped() if self.selection is not None else {}

    @property
    def hours(self) -> float:
        return hours(self.index) if self.index is not None else 0.0


# ---------------------------------------------------------------- what an earlier run wrote

def read_state(out_dir) -> dict:
    """shards.json of an earlier run ({} when none). Folders written before shards.json existed: their
    index.parquet names the shards."""
    path = Path(out_dir) / STATE_DIR / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(state, dict) and isinstance(state.get("files"), list):
            return state
    except (OSError, ValueError):
        pass
    index = Path(out_dir) / "index.parquet"
    try:
        shards = pd.read_parquet(index, columns=["shard"])["shard"].dropna().astype(str)
        return {"format": "webdataset", "clip_options": ClipOptions().describe(), "files": sorted(set(shards))}
    except Exception:  # no index, or one without shards: nothing of ours to recognise
        return {}


def write_state(out_dir: Path, fmt: str, opts: ClipOptions, files) -> None:
    state = {"format": fmt, "clip_options": opts.describe(), "files": sorted(set(files))}
    atomic_write_text(Path(out_dir) / STATE_DIR / STATE_FILE, json.dumps(state, indent=1))


def check_output(out_dir, fmt: str, opts: ClipOptions) -> dict:
    """The earlier run's state; ShardsError when the folder holds an export of another format or clip options
    (mixing them would leave clips made two ways). Cheap: called before any work."""
    if fmt not in WRITERS:
        raise ShardsError(f"unknown format {fmt!r} ({', '.join(WRITERS)})")
    state = read_state(out_dir)
    if not state or not any((Path(out_dir) / f).exists() for f in state["files"]):
        return state
    old = (state.get("format"), state.get("clip_options"))
    if old != (fmt, opts.describe()):
        what = f"a {old[0]} export" if old[0] != fmt else f"clips made with other clip options ({old[1]})"
        raise ShardsError(f"{out_dir} holds {what}; use another output folder, or delete it first")
    return state


# ---------------------------------------------------------------- the build

def build_shards(df: pd.DataFrame, out_dir, index_dir=None, dedup: bool = True, shard_size: int = 10**9,
                 fmt: str = "webdataset", engine=None, where=None, keep_tops=(), allow_flags=(),
                 clip_options: ClipOptions | None = None, failures=(), source: str = "manifest",
                 hashes_also=(), require_indexed: bool | None = None, rehash: bool = False) -> ShardReport:
    """The whole build on a manifest DataFrame (the caller holds `index.files.OutputLock` on `out_dir`).

    Dedup uses `index_dir` (an index-clips folder) or, without one, the frame's own `dup_group`/`keep` columns;
    `where` is a parsed `where.Node`, `keep_tops` [(column, fraction)]; `failures`: rows the manifest reader
    refused already (recorded again in failed.jsonl); `engine`: `index.engine.EngineOptions` for the cutting."""
    out_dir = Path(out_dir)
    opts = clip_options or ClipOptions()
    state = check_output(out_dir, fmt, opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = WRITERS[fmt]()
    staging = out_dir / ".staging"
    folders = [out_dir, staging] + ([out_dir / writer.media] if writer.media else [])
    remove_own_temps(*folders)
    try:
        return _build(df, out_dir, writer, state, index_dir, dedup, shard_size, engine, where, keep_tops,
                      allow_flags, opts, failures, source, hashes_also, require_indexed, rehash)
    except BaseException:
        remove_own_temps(*folders)  # an interrupted write leaves nothing behind
        raise


def _dedup_table(df: pd.DataFrame, index_dir) -> pd.DataFrame | None:
    if index_dir is not None:
        from ..dedup.groups import load_dedup

        return load_dedup(index_dir)
    if "dup_group" in df and "keep" in df:
        return df[["clip_id", "dup_group", "keep"]]
    return None


def _build(df, out_dir: Path, writer, state: dict, index_dir, dedup, shard_size, engine, where, keep_tops,
           allow_flags, opts: ClipOptions, failures, source, hashes_also, require_indexed, rehash) -> ShardReport:
    report = ShardReport(out_dir, format=writer.name, clip_options=opts)
    table = _dedup_table(df, index_dir) if dedup else None
    sel = select_clips(df.reset_index(drop=True), source, allow_flags, where, keep_tops, table,
                       bool(index_dir is not None if require_indexed is None else require_indexed), failures)
    report.selection = sel
    clips = sel.clips.assign(key=[safe_key(c) for c in sel.clips["clip_id"]])

    plans, fit = {}, []
    for row in clips.to_dict("records"):
        plan = plan_clip(row, opts)
        fit.append(not isinstance(plan, str))
        if isinstance(plan, str):
            report.unfit.append((row["clip_id"], plan))
        else:
            plans[row["key"]] = plan
    clips = sel.add("unfit", "cannot meet the clip options", pd.Series(fit, dtype=bool).to_numpy(), clips)
    clips = clips.assign(**_clip_values(clips["key"], plans))
    clips["bucket"] = [bucket_of(w, h, n) for w, h, n in
                       zip(clips["clip_width"], clips["clip_height"], clips["clip_num_frames"])]

    staging = out_dir / ".staging"
    ctx = Context(out_dir, staging, own=set(state.get("files", [])), shard_size=shard_size,
                  clip_columns=opts.active())
    held = writer.held(ctx)
    ready = {k for k in clips["key"] if k in held or ctx.staged(k)}
    todo = clips[~clips["key"].isin(ready)]
    with HashCache(out_dir, also=hashes_also, rehash=rehash) as hashes:
        staged, cut_failures = stage_clips(todo, plans, out_dir, staging, hashes, engine)
    sel.failures += cut_failures
    ok = clips["key"].isin(ready | staged).to_numpy()
    clips = sel.add("failed", "sources that could not be cut (missing, changed, undecodable)", ok, clips)

    index = _write(writer, clips, ctx, opts)
    if staging.is_dir():  # staged clips of this manifest are copies now: the output holds them
        keys = {safe_key(c) for c in df["clip_id"]}
        for p in staging.glob("*.mp4"):
            if p.stem in keys and p.is_file():
                p.unlink()
        if not any(staging.iterdir()):
            staging.rmdir()
    front = [c for c in ("clip_id", "key", "file", "shard", "offset", "size", "bucket") if c in index]
    index = index[front + [c for c in index.columns if c not in front]].reset_index(drop=True)
    atomic_write_bytes(out_dir / "index.parquet", index.to_parquet(index=False))
    write_failed(out_dir, sel.failures)
    report.index, report.samples, report.failures = index, len(index), sel.failures
    report.files = writer.files(index)
    report.shards = sorted(set(index["shard"])) if "shard" in index else []
    return report


def _clip_values(keys, plans) -> dict:
    ps = [plans[k] for k in keys]
    return {"clip_num_frames": [p.num_frames for p in ps], "clip_fps": [round(p.fps, 6) for p in ps],
            "clip_width": [p.width for p in ps], "clip_height": [p.height for p in ps]}


def _write(writer, clips: pd.DataFrame, ctx: Context, opts: ClipOptions) -> pd.DataFrame:
    """The writer's output, with shards.json naming every file before it is written, and the files of an
    earlier run that the new output does not list removed afterwards."""
    claimed = set(ctx.own)

    def claim(files) -> None:
        new = set(files) - claimed
        foreign = sorted(f for f in new if (ctx.out_dir / f).exists() or (ctx.out_dir / f).is_symlink())
        if foreign:
            raise ShardsError(f"{ctx.out_dir / foreign[0]} exists and was not written by build-shards; "
                              "move it away or use another output folder")
        if new:
            claimed.update(new)
            write_state(ctx.out_dir, writer.name, opts, claimed)

    ctx.claim = claim
    index = writer.write(clips, ctx)
    files = writer.files(index)
    for stale in sorted(claimed - set(files)):
        p = ctx.out_dir / stale
        if p.is_file() or p.is_symlink():
            p.unlink()
    write_state(ctx.out_dir, writer.name, opts, files)
    return index


def flag_summary(sel: Selection) -> str:
    """'truncated 2, refusal 1 dropped; loop 1 kept' for the summary line."""
    dropped = ", ".join(f"{f} {c['dropped']}" for f, c in sorted(sel.flags.items()) if c["dropped"])
    kept = ", ".join(f"{f} {c['kept']}" for f, c in sorted(sel.flags.items()) if c["kept"])
    return "; ".join(p for p in (f"{dropped} dropped" if dropped else "", f"{kept} kept" if kept else "") if p)


__all__ = ["ShardReport", "ShardsError", "Step", "build_shards", "check_output", "read_state", "STAGE"]
