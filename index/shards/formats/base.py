"""The interface every export format implements, and the parts the folder-shaped formats share.

A build hands each writer the same clip set, as the relation `Context.clips` inside the build's DuckDB connection:
the filtered, deduplicated rows of the manifest with their `key` (the file stem), `bucket` and the written clip's
`clip_*` values, every clip either staged (SHARDS_DIR/.staging/KEY.mp4: `_staged` true, `_size` its bytes) or
already in the output (`held`). The writer streams the rows in the order its format wants (`Context.rows`), puts
the clips where its format wants them, writes its list files as it goes (a temp file placed when complete:
`TextOut`), and yields the index rows, one per clip with the `file` that holds it, batch by batch. Lists that need
the whole clip set (a TOML's resolution and frame buckets) are written in `finish` from SQL aggregates of the
index. The build then removes files an earlier run of ours wrote that the new output no longer lists (and only
those), and records the new list, so a re-run with the same inputs changes nothing. Every path goes through
`index.storage`: the output may be a folder or a bucket.
"""

from __future__ import annotations

import abc
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from ... import query, storage
from ...files import _UMASK, temp_name

INTERNAL = ("key", "file", "offset", "size", "clip_num_frames", "clip_fps", "clip_width", "clip_height")
CLIP_COLUMNS = ("clip_num_frames", "clip_fps", "clip_width", "clip_height")
ROWS = 4096  # rows of a batch handed to a writer


@dataclass
class Context:
    out_dir: object  # a Path or a UPath (index.storage.location)
    staging: object
    own: set = field(default_factory=set)  # files (relative to out_dir) an earlier run of ours wrote
    shard_size: int = 10**9
    clip_columns: bool = False  # the clip options changed the clips: records carry the clip_* values
    claim: Callable = lambda files: None  # a writer names each file here before writing it (see build._write)
    con: object = None  # the build's DuckDB connection
    clips: str = ""  # the clip set as a relation of `con`

    def rows(self, order: str, columns: str = "*"):
        """The clips as Arrow record batches of ROWS rows in `order` (a SQL ORDER BY list): small batches, since
        writers turn them into Python rows (a row of every column, caption included, is a few KB as a dict)."""
        yield from query.batches(self.con, f"SELECT {columns} FROM {self.clips} ORDER BY {order}", rows=ROWS)

    def read_staged(self, key: str) -> bytes:
        return storage.read_bytes(self.staging / f"{key}.mp4")

    def record(self, row) -> dict:
        """A clip's record as the format stores it: the manifest row and its bucket (+ the clip_* values when the
        clip options changed the clips)."""
        drop = INTERNAL if not self.clip_columns else tuple(c for c in INTERNAL if c not in CLIP_COLUMNS)
        return {k: v for k, v in row.items() if k not in drop and not k.startswith("_")}

    def shown(self, rel: str) -> str:
        """A file of the output as a user opens it: an absolute path, or the URL."""
        loc = self.out_dir / rel
        return storage.text(loc) if storage.is_remote(loc) else str(loc.resolve())


def index_rows(batch, **extra) -> pa.Table:
    """A batch of clip rows as index rows: without the build's own `_` columns, with the writer's columns."""
    t = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    t = t.select([c for c in t.column_names if not c.startswith("_")])
    for name, values in extra.items():
        t = t.append_column(name, pa.array(values))
    return t


@dataclass
class FormatInfo:
    """What the data card says about a format's output."""
    text: str  # the files, in a sentence or two
    read: str  # a code block that reads it with the target tool
    data_files: list  # Hugging Face `configs` data_files (globs relative to the folder)
    files: list = field(default_factory=list)  # every file of the output (for the size on disk)
    totals: list = field(default_factory=list)  # extra (label, value) rows for the card's totals


class Writer(abc.ABC):
    name = ""
    help = ""
    media = "videos"  # folder of the clip files (None: inside archives)

    def fixed_files(self) -> list[str]:
        """Files this format always writes under these names (lists, configs)."""
        return []

    def held(self, ctx: Context) -> pa.Table:
        """Keys (column `key`, + `size`) whose clip an earlier run put in the output (complete: every write is
        atomic), from one listing of the media folder."""
        present = regular_files(ctx.out_dir / self.media)
        keys, sizes = [], []
        for rel in ctx.own:
            name = rel[len(self.media) + 1:]
            if rel.startswith(f"{self.media}/") and name.endswith(".mp4") and "/" not in name and name in present:
                keys.append(name[:-4])
                sizes.append(present[name])
        return pa.table({"key": pa.array(keys, pa.string()), "size": pa.array(sizes, pa.int64())})

    @abc.abstractmethod
    def write(self, ctx: Context):
        """Write the output; yield the index rows (Arrow tables: the clip rows with a `file` column, + the
        format's own columns)."""

    def finish(self, ctx: Context, index: str) -> None:
        """After the index is written (`index`: a relation of it): files made from the whole clip set."""

    @abc.abstractmethod
    def describe(self, clips: int, files: list, out_dir) -> FormatInfo:
        """The card's section for this output (`files`: as `files` lists them)."""

    def files(self, con, index: str) -> list[str]:
        """Every file of the output, relative to its folder."""
        got = [r for r, in con.execute(f"SELECT DISTINCT file FROM {index} ORDER BY file").fetchall()]
        return sorted(set(got) | set(self.fixed_files()))

    # ------------------------------------------------------------ shared by the folder-shaped formats

    def place_clips(self, ctx: Context, batch, captions: bool) -> pa.Table:
        """Move the batch's staged clips to MEDIA/KEY.mp4 (a rename on disk, a copy then delete on a store: the
        object appears complete) and write KEY.txt captions that changed; the batch's index rows."""
        keys = batch.column("key").to_pylist()
        files = [f"{self.media}/{k}.mp4" for k in keys]
        ctx.claim(files + ([f[:-4] + ".txt" for f in files] if captions else []) + self.fixed_files())
        folder = ctx.out_dir / self.media
        storage.makedirs(folder)
        staged = batch.column("_staged").to_pylist()
        caps = batch.column("caption").to_pylist()
        for key, is_staged, caption in zip(keys, staged, caps):
            dst = folder / f"{key}.mp4"
            if is_staged:
                move(ctx.staging / f"{key}.mp4", dst)
            if captions:
                write_if_changed(folder / f"{key}.txt", str(caption))
        return index_rows(batch, file=files)

    def files_with_captions(self, con, index: str) -> list[str]:
        files = [r for r, in con.execute(f"SELECT file FROM {index} ORDER BY file").fetchall()]
        return sorted(set(files) | {f[:-4] + ".txt" for f in files} | set(self.fixed_files()))


def regular_files(folder) -> dict[str, int]:
    """{name: size} of the regular files directly in `folder` (a link is not one of our files), in one listing."""
    loc = storage.location(folder)
    if storage.is_remote(loc):
        return {n: int(i.get("size") or 0) for n, i in storage.listing(loc).items() if i.get("type") == "file"}
    out = {}
    try:
        with os.scandir(loc) as it:
            for e in it:
                if e.is_file(follow_symlinks=False):
                    out[e.name] = e.stat(follow_symlinks=False).st_size
    except (FileNotFoundError, NotADirectoryError):
        pass
    return out


def move(src, dst) -> None:
    """A finished file to its place: a rename on disk; on a store a server-side copy, then the source deleted."""
    src, dst = storage.location(src), storage.location(dst)
    if not storage.is_remote(dst):
        os.replace(src, dst)
        return
    fs, s = storage.fs_path(src)
    _, d = storage.fs_path(dst)
    fs.copy(s, d)
    storage.remove(src)


class TextOut:
    """A text file of the output written as it is read (one line at a time) and placed when complete: a temp file
    beside it then a rename on disk, an upload on a store (the object appears complete)."""

    def __init__(self, path):
        self.path = storage.location(path)
        if storage.is_remote(self.path):
            fd, self.local = tempfile.mkstemp(prefix="shotcap-out-", suffix=".txt")
            os.close(fd)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.local = os.fspath(temp_name(self.path))
        self.f = open(self.local, "w", encoding="utf-8", newline="")

    def write(self, text: str) -> None:
        self.f.write(text)

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        if not storage.is_remote(self.path):
            os.chmod(self.local, 0o666 & ~_UMASK)
        storage.upload(self.local, self.path)

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        if kind is None:
            self.close()
        else:
            self.f.close()
            if os.path.exists(self.local):
                os.unlink(self.local)
        return False


def write_if_changed(path, text: str) -> None:
    """An atomic write, skipped when the file already holds `text` (a re-run leaves it untouched)."""
    try:
        if storage.read_text(path) == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    storage.write_text(path, text)


def json_value(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, np.ndarray):
        return [json_value(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [json_value(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is pd.NA or v is pd.NaT or v is None:
        return None
    return v


def row_json(row: dict) -> bytes:
    """The sample's JSON: sorted keys, UTF-8, no NaN (null instead)."""
    return json.dumps({k: json_value(v) for k, v in row.items()}, ensure_ascii=False, sort_keys=True).encode()


def floor_4k1(n: int) -> int:
    return max(1, (int(n) - 1) // 4 * 4 + 1)


def frame_targets(counts) -> list[int]:
    """Frame counts of the form 4k+1 that the clips can fill: from the shortest, the median and the longest
    clip (each rounded down), so every clip fills at least the shortest one."""
    counts = np.asarray(counts, int)
    if not len(counts):
        return [1]
    return targets_of(np.min(counts), np.median(counts), np.max(counts))


def targets_of(lo, median, hi) -> list[int]:
    return sorted({floor_4k1(lo), floor_4k1(median), floor_4k1(hi)})


@dataclass
class ClipStats:
    """What the config files say of the clip set, from SQL aggregates of the index (no row is held)."""
    clips: int
    sizes: list  # (width, height, clips), most clips first, then the larger area
    frames: tuple  # (min, median, max) of clip_num_frames
    fps: list  # the distinct clip_fps, rounded to 3 decimals

    @classmethod
    def of(cls, con, index: str) -> "ClipStats":
        n, lo, med, hi = con.execute(f"SELECT count(*), min(clip_num_frames), quantile_cont(clip_num_frames, 0.5), "
                                     f"max(clip_num_frames) FROM {index}").fetchall()[0]
        sizes = con.execute(f"SELECT clip_width, clip_height, count(*) AS n FROM {index} "
                            "GROUP BY clip_width, clip_height "
                            "ORDER BY n DESC, clip_width * clip_height DESC, clip_width, clip_height").fetchall()
        fps = [r for r, in con.execute(f"SELECT DISTINCT round(clip_fps, 3) AS f FROM {index} ORDER BY f").fetchall()]
        return cls(int(n), [(int(w), int(h), int(c)) for w, h, c in sizes], (lo, med, hi), fps)

    def targets(self) -> list[int]:
        return targets_of(*self.frames) if self.clips else [1]

    def common_size(self, multiple: int = 16) -> tuple[int, int]:
        """The most common clip size (the larger on a tie), rounded down to `multiple`: the training resolution
        the TOMLs propose (buckets of other aspect ratios keep its area)."""
        if not self.sizes:
            return (multiple, multiple)
        w, h, _ = self.sizes[0]
        return max(multiple, int(w) // multiple * multiple), max(multiple, int(h) // multiple * multiple)


def common_size(index: pd.DataFrame, multiple: int = 16) -> tuple[int, int]:
    """`ClipStats.common_size` of a small index frame."""
    sizes = index.groupby(["clip_width", "clip_height"]).size().reset_index(name="n")
    sizes["area"] = sizes["clip_width"] * sizes["clip_height"]
    w, h = sizes.sort_values(["n", "area"], ascending=False).iloc[0][["clip_width", "clip_height"]]
    return max(multiple, int(w) // multiple * multiple), max(multiple, int(h) // multiple * multiple)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(float(v)) if math.isfinite(v) else "nan"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return json.dumps(str(v))  # a TOML basic string: JSON's escapes (\" \\ \n \uXXXX) are TOML's too
