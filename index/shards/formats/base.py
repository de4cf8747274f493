"""The interface every export format implements, and the parts the folder-shaped formats share.

A build hands each writer the same clip set: the filtered, deduplicated rows of the manifest with their `key`
(the file stem), `bucket` and the written clip's `clip_*` values, every clip either staged
(SHARDS_DIR/.staging/KEY.mp4) or already in the output (`held`). The writer puts the clips where its format
wants them, writes its list files atomically, and returns one row per clip with the `file` that holds it.
The build then removes files an earlier run of ours wrote that the new output no longer lists (and only
those), and records the new list, so a re-run with the same inputs changes nothing.
"""

from __future__ import annotations

import abc
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ...files import atomic_write_text

INTERNAL = ("key", "file", "offset", "size", "clip_num_frames", "clip_fps", "clip_width", "clip_height")
CLIP_COLUMNS = ("clip_num_frames", "clip_fps", "clip_width", "clip_height")


@dataclass
class Context:
    out_dir: Path
    staging: Path
    own: set = field(default_factory=set)  # files (relative to out_dir) an earlier run of ours wrote
    shard_size: int = 10**9
    clip_columns: bool = False  # the clip options changed the clips: records carry the clip_* values
    claim: Callable = lambda files: None  # a writer names each file here before writing it (see build._write)

    def staged(self, key: str) -> Path | None:
        p = self.staging / f"{key}.mp4"
        return p if p.is_file() else None

    def record(self, row) -> dict:
        """A clip's record as the format stores it: the manifest row and its bucket (+ the clip_* values when the
        clip options changed the clips)."""
        drop = INTERNAL if not self.clip_columns else tuple(c for c in INTERNAL if c not in CLIP_COLUMNS)
        return {k: v for k, v in row.items() if k not in drop}


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

    def held(self, ctx: Context) -> set[str]:
        """Keys whose clip an earlier run put in the output (complete: every write is atomic)."""
        keys = set()
        for rel in ctx.own:
            p = ctx.out_dir / rel
            if rel.startswith(f"{self.media}/") and rel.endswith(".mp4") and p.is_file() and not p.is_symlink():
                keys.add(Path(rel).stem)
        return keys

    @abc.abstractmethod
    def write(self, clips: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        """Write the output; return `clips` with a `file` column (+ the format's own columns)."""

    @abc.abstractmethod
    def describe(self, index: pd.DataFrame, out_dir: Path) -> FormatInfo:
        """The card's section for this output."""

    def files(self, index: pd.DataFrame) -> list[str]:
        """Every file of the output, relative to its folder."""
        return sorted(set(index["file"]) | set(self.fixed_files())) if len(index) else list(self.fixed_files())

    # ------------------------------------------------------------ shared by the folder-shaped formats

    def place_clips(self, clips: pd.DataFrame, ctx: Context, captions: bool) -> pd.DataFrame:
        """Move staged clips to MEDIA/KEY.mp4 (a rename: atomic) and write KEY.txt captions that changed."""
        folder = ctx.out_dir / self.media
        files = [f"{self.media}/{k}.mp4" for k in clips["key"]]
        ctx.claim(files + ([f[:-4] + ".txt" for f in files] if captions else []) + self.fixed_files())
        folder.mkdir(parents=True, exist_ok=True)
        for key, caption in zip(clips["key"], clips["caption"].astype(str)):
            dst = folder / f"{key}.mp4"
            src = ctx.staged(key)
            if src is not None:
                os.replace(src, dst)
            elif not dst.is_file():
                raise RuntimeError(f"clip {key} is neither staged nor in {folder}")
            if captions:
                write_if_changed(folder / f"{key}.txt", caption)
        return clips.assign(file=files)

    def files_with_captions(self, index: pd.DataFrame) -> list[str]:
        txt = [f[:-4] + ".txt" for f in index["file"]] if len(index) else []
        return sorted(set(index["file"]) | set(txt) | set(self.fixed_files())) if len(index) else list(
            self.fixed_files())


def write_if_changed(path: Path, text: str) -> None:
    """An atomic write, skipped when the file already holds `text` (a re-run leaves it untouched)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)


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
    return sorted({floor_4k1(np.min(counts)), floor_4k1(np.median(counts)), floor_4k1(np.max(counts))})


def common_size(index: pd.DataFrame, multiple: int = 16) -> tuple[int, int]:
    """The most common clip size (the larger on a tie), rounded down to `multiple`: the training resolution
    the TOMLs propose (buckets of other aspect ratios keep its area)."""
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
