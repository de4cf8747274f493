"""`webdataset`: tar shards of `<key>.mp4` + `<key>.json`, one bucket (resolution, aspect, frame count) per shard.

Shards are written with `webdataset.TarWriter` with a fixed mode, owner and time (0644, uid/gid 0, no user or
group names, mtime 0), each sample as two members in this order: the clip, then its JSON (the manifest row
and its bucket). So the same clips give the same bytes, and a shard is the same as the hand-made ustar writer
earlier versions used (a test holds that writer's sha256). A shard is written to a temp name and renamed:
complete or absent. `index.parquet` records where each clip's mp4 bytes lie (`shard`, `offset`, `size`), so a
trainer reads a sample with one seek instead of scanning tar headers.

A re-run keeps a shard that already holds exactly the planned members with the same JSON bytes, and rewrites
the others; clips that live only in a shard being rewritten are copied out first. Only regular-file members
count: a link or device member (a crafted or damaged tar) is never read, and its shard is rewritten.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pandas as pd

from ...files import atomic_write_bytes, temp_name
from .base import Context, FormatInfo, Writer, row_json

EXTRA = 2048  # bytes a sample adds besides its mp4: two tar headers, padding and the JSON (for the plan)


def write_shard(path, samples: list[tuple[str, dict, Path]]) -> list[tuple[int, int]]:
    """Write one tar (temp name, fsync, rename): (key, record, mp4 file) per sample.
    Returns (offset, size) of each sample's mp4 bytes in the tar."""
    import webdataset as wds

    path = Path(path)
    tmp = temp_name(path)
    where = []
    try:
        with open(tmp, "wb", buffering=1 << 20) as f:
            tw = wds.TarWriter(f, user="", group="", mode=0o644, mtime=0, encoder=False)
            for key, row, mp4 in samples:
                data = Path(mp4).read_bytes()
                tw.write({"__key__": key, "mp4": data})  # one member per call keeps mp4 before json
                padded = (len(data) + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE
                where.append((tw.tarstream.offset - padded, len(data)))  # the data ends where the archive is now
                tw.write({"__key__": key, "json": row_json(row)})
            tw.close()  # end-of-archive blocks, padded to a whole record (the file itself stays open)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return where


def plan_shards(df: pd.DataFrame, sizes: dict, shard_size: int) -> pd.DataFrame:
    """Fixed order (bucket, key); a shard closes before it would pass shard_size (>= 1 sample)."""
    df = df.sort_values(["bucket", "key"], kind="stable").reset_index(drop=True)
    names, current, used, count = [], None, 0, 0
    for bucket, key in zip(df["bucket"], df["key"]):
        size = sizes[key] + EXTRA
        if current is None or current[0] != bucket or (used + size > shard_size and used > 0):
            count = count + 1 if current is not None and current[0] == bucket else 0
            current, used = (bucket, count), 0
        used += size
        names.append(f"{bucket}-{current[1]:05d}.tar")
    return df.assign(shard=names)


class WebDatasetWriter(Writer):
    name = "webdataset"
    help = "tar shards of <key>.mp4 + <key>.json, one bucket each, with index.parquet offsets"
    media = None

    def __init__(self):
        self.members: dict[str, list[tarfile.TarInfo]] = {}  # our readable shards -> regular-file members
        self.in_tar: dict[str, tuple[str, tarfile.TarInfo]] = {}  # key -> (shard, mp4 member)

    def held(self, ctx: Context) -> set[str]:
        for name in sorted(f for f in ctx.own if f.endswith(".tar") and "/" not in f):
            path = ctx.out_dir / name
            if not path.is_file() or path.is_symlink():
                continue
            try:
                with tarfile.open(path) as tar:
                    members = tar.getmembers()
            except (tarfile.TarError, OSError):  # ours but damaged: rewritten, or removed as stale
                continue
            self.members[name] = members
            for m in members:
                if m.isfile() and m.name.endswith(".mp4"):
                    self.in_tar.setdefault(m.name[:-4], (name, m))
        return set(self.in_tar)

    def _intact(self, shard: str, keys, records: list[bytes], out_dir: Path) -> bool:
        members = self.members.get(shard)
        if members is None or any(not m.isfile() for m in members):
            return False
        if [m.name for m in members] != [f"{k}.{e}" for k in keys for e in ("mp4", "json")]:
            return False
        with tarfile.open(out_dir / shard) as tar:
            return [tar.extractfile(m).read() for m in members if m.name.endswith(".json")] == records

    def write(self, clips: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        sizes = {k: (ctx.staged(k).stat().st_size if ctx.staged(k) else self.in_tar[k][1].size)
                 for k in clips["key"]}
        df = plan_shards(clips, sizes, ctx.shard_size)
        ctx.claim(sorted(set(df["shard"])))
        groups = {s: rows for s, rows in df.groupby("shard", sort=True)}
        records = {s: [ctx.record(r) for r in rows.to_dict("records")] for s, rows in groups.items()}
        todo = [s for s, rows in groups.items()
                if not self._intact(s, list(rows["key"]), [row_json(m) for m in records[s]], ctx.out_dir)]
        self._unpack([k for s in todo for k in groups[s]["key"] if not ctx.staged(k)], ctx)
        where: dict[str, tuple[int, int]] = {}
        for s in todo:
            keys = list(groups[s]["key"])
            spots = write_shard(ctx.out_dir / s, [(k, m, ctx.staging / f"{k}.mp4") for k, m in zip(keys, records[s])])
            where.update(zip(keys, spots))
        for s in set(groups) - set(todo):
            for m in self.members[s]:
                if m.name.endswith(".mp4"):
                    where[m.name[:-4]] = (m.offset_data, m.size)
        return df.assign(file=df["shard"], offset=[where[k][0] for k in df["key"]],
                         size=[where[k][1] for k in df["key"]])

    def _unpack(self, keys: list[str], ctx: Context) -> None:
        """Copy clips that live only in shards being rewritten back to staging (before any is rewritten)."""
        by_tar: dict[str, list[str]] = {}
        for k in keys:
            by_tar.setdefault(self.in_tar[k][0], []).append(k)
        for name, ks in by_tar.items():
            with tarfile.open(ctx.out_dir / name) as tar:
                for k in ks:
                    atomic_write_bytes(ctx.staging / f"{k}.mp4", tar.extractfile(self.in_tar[k][1]).read())

    def describe(self, index: pd.DataFrame, out_dir: Path) -> FormatInfo:
        shards = sorted(set(index["file"])) if len(index) else []
        return FormatInfo(
            text="WebDataset tar shards, one bucket (resolution, aspect ratio w:h, frame-count range) per shard, "
                 "each sample a `<key>.mp4` clip and a `<key>.json` record (the manifest row and its bucket). "
                 "`index.parquet` lists every sample with its `shard`, and the byte `offset` and `size` of its "
                 "mp4 inside the shard, so a reader can seek straight to it.",
            read=("```python\nimport glob\nimport webdataset as wds\n"
                  "urls = sorted(glob.glob(\"path/to/this/folder/*.tar\"))\n"
                  "ds = wds.WebDataset(urls, shardshuffle=False).decode()  # {\"__key__\", \"mp4\": bytes, \"json\": dict}\n"
                  "```"),
            data_files=["*.tar"], files=shards, totals=[("shards", len(shards))])
