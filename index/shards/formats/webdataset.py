"""`webdataset`: tar shards of `<key>.mp4` + `<key>.json`, one bucket (resolution, aspect, frame count) per shard.

Shards are written with the standard library's `tarfile` exactly as `webdataset.TarWriter` writes them (its stream
mode, fixed mode, owner and time: 0644, uid/gid 0, no user or group names, mtime 0; importing webdataset would
import torch, half a gigabyte of the driver's memory, for nothing), each sample as two members in this order: the
clip, then its JSON (the manifest row, its bucket and shard). So the same clips give the same bytes, and a shard
is the same as the hand-made ustar writer earlier versions used and as TarWriter's (a test holds that writer's
sha256). A shard is written to a temp name and renamed: complete or absent (on a store: uploaded as one object).
`index.parquet` records where each clip's mp4 bytes lie (`shard`, `offset`, `size`), so a trainer reads a sample
with one seek instead of scanning tar headers.

A re-run keeps a shard that already holds exactly the planned members with the same JSON bytes, and rewrites
the others; clips that live only in a shard being rewritten are copied out first. Only regular-file members
count: a link or device member (a crafted or damaged tar) is never read, and its shard is rewritten.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa

from ... import query, storage
from ...files import temp_name
from .base import Context, FormatInfo, Writer, index_rows, regular_files, row_json

EXTRA = 2048  # bytes a sample adds besides its mp4: two tar headers, padding and the JSON (for the plan)


def write_shard(path, samples) -> list[tuple[int, int]]:
    """Write one tar: (key, record, mp4) per sample (any iterable), the mp4 a local file or its bytes. On disk a
    temp name, fsync, rename; on a store a local temp file uploaded as one object (it appears complete, or not at all).
    Returns (offset, size) of each sample's mp4 bytes in the tar."""
    loc = storage.location(path)
    remote = storage.is_remote(loc)
    if remote:
        fd, tmp = tempfile.mkstemp(prefix="shotcap-shard-", suffix=".tar")
        os.close(fd)
        tmp = Path(tmp)
    else:
        tmp = temp_name(Path(loc))
    where = []
    try:
        with open(tmp, "wb", buffering=1 << 20) as f:
            tar = tarfile.open(fileobj=f, mode="w|")  # what webdataset.TarWriter opens (its stream mode)
            for key, row, mp4 in samples:
                data = mp4 if isinstance(mp4, bytes) else Path(mp4).read_bytes()
                _member(tar, f"{key}.mp4", data)  # the clip before its JSON
                padded = (len(data) + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE
                where.append((tar.offset - padded, len(data)))  # the data ends where the archive is now
                _member(tar, f"{key}.json", row_json(row))
            tar.close()  # end-of-archive blocks, padded to a whole record (the file itself stays open)
            f.flush()
            os.fsync(f.fileno())
        if remote:
            storage.upload(tmp, loc)
        else:
            os.replace(tmp, loc)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return where


def _member(tar, name: str, data: bytes) -> None:
    """One regular-file member as webdataset.TarWriter(user="", group="", mode=0o644, mtime=0) writes it."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    tar.addfile(info, io.BytesIO(data))


class ShardPlan:
    """Shard names in the fixed order (bucket, key); a shard closes before it would pass shard_size (>= 1 sample).
    Fed one clip at a time: O(1) state."""

    def __init__(self, shard_size: int):
        self.shard_size, self.current, self.used, self.count = shard_size, None, 0, 0

    def name(self, bucket: str, size: int) -> str:
        size += EXTRA
        if self.current is None or self.current[0] != bucket or (self.used + size > self.shard_size and self.used > 0):
            self.count = self.count + 1 if self.current is not None and self.current[0] == bucket else 0
            self.current, self.used = (bucket, self.count), 0
        self.used += size
        return f"{bucket}-{self.current[1]:05d}.tar"


def plan_shards(df, sizes: dict, shard_size: int):
    """`ShardPlan` over a small frame (bucket, key): the frame sorted, with its `shard`."""
    df = df.sort_values(["bucket", "key"], kind="stable").reset_index(drop=True)
    plan = ShardPlan(shard_size)
    return df.assign(shard=[plan.name(b, sizes[k]) for b, k in zip(df["bucket"], df["key"])])


def _members(path) -> list[tarfile.TarInfo] | None:
    """The members of a tar of ours (None: unreadable, a damaged or foreign file: rewritten, or removed as stale)."""
    from ...engine import BadInput

    try:
        with storage.open_read(path) as f, tarfile.open(fileobj=f) as tar:
            return tar.getmembers()
    except (tarfile.TarError, OSError, EOFError, BadInput):  # BadInput: missing, or not a regular file
        return None


class WebDatasetWriter(Writer):
    name = "webdataset"
    help = "tar shards of <key>.mp4 + <key>.json, one bucket each, with index.parquet offsets"
    media = None

    def held(self, ctx: Context) -> pa.Table:
        """Clips in our readable shards: key, size, the shard and the member's data offset (regular files only)."""
        present = regular_files(ctx.out_dir)
        cols = {"key": [], "size": [], "shard": [], "offset": []}
        seen = set()
        for name in sorted(f for f in ctx.own if f.endswith(".tar") and "/" not in f):
            if name not in present:
                continue
            for m in _members(ctx.out_dir / name) or ():
                if m.isfile() and m.name.endswith(".mp4") and m.name[:-4] not in seen:
                    seen.add(m.name[:-4])  # the first shard holding a key is where it is read from
                    for c, v in zip(cols, (m.name[:-4], m.size, name, m.offset_data)):
                        cols[c].append(v)
        return pa.table({"key": pa.array(cols["key"], pa.string()), "size": pa.array(cols["size"], pa.int64()),
                         "shard": pa.array(cols["shard"], pa.string()), "offset": pa.array(cols["offset"], pa.int64())})

    def _shards(self, ctx: Context):
        """(shard, rows) in order: the clips grouped by their planned shard (one shard's rows held at a time)."""
        cur, rows = None, []
        for batch in ctx.rows("bucket, key"):
            for row in batch.to_pylist():
                if row["_shard"] != cur and rows:
                    yield cur, rows
                    rows = []
                cur = row["_shard"]
                rows.append(row)
        if rows:
            yield cur, rows

    def _intact(self, shard: str, rows: list[dict], ctx: Context) -> bool:
        """The shard of ours already holds exactly these members, with the same JSON bytes."""
        if shard not in ctx.own:
            return False
        members = _members(ctx.out_dir / shard)
        if members is None or any(not m.isfile() for m in members):
            return False
        if [m.name for m in members] != [f"{r['key']}.{e}" for r in rows for e in ("mp4", "json")]:
            return False
        with storage.open_read(ctx.out_dir / shard) as f, tarfile.open(fileobj=f) as tar:
            got = [tar.extractfile(m).read() for m in members if m.name.endswith(".json")]
        return got == [row_json(self.record(ctx, r)) for r in rows]

    def write(self, ctx: Context):
        con = ctx.con
        plan, names, keys = ShardPlan(ctx.shard_size), [], []
        con.execute("CREATE OR REPLACE TABLE _shard_of (key VARCHAR, _shard VARCHAR)")
        for batch in ctx.rows("bucket, key", "key, bucket, _size"):
            for key, bucket, size in zip(*(batch.column(i).to_pylist() for i in range(3))):
                keys.append(key)
                names.append(plan.name(bucket, int(size)))
            query.arrow(con, "_shard_of_part", pa.table({"key": keys, "_shard": names}))
            con.execute("INSERT INTO _shard_of SELECT * FROM _shard_of_part")
            keys, names = [], []
        clips = ctx.clips
        con.execute(f"CREATE OR REPLACE VIEW _wds AS SELECT c.*, s._shard FROM {clips} c JOIN _shard_of s USING (key)")
        ctx.clips = "_wds"
        shards = [s for s, in con.execute("SELECT DISTINCT _shard FROM _shard_of ORDER BY 1").fetchall()]
        ctx.claim(shards)
        todo = [s for s, rows in self._shards(ctx) if not self._intact(s, rows, ctx)]
        query.arrow(con, "_todo_shards", pa.table({"s": pa.array(todo, pa.string())}))
        self._unpack(ctx)
        redo = set(todo)
        con.execute('CREATE OR REPLACE TABLE _spots (key VARCHAR, "offset" BIGINT, size BIGINT)')
        for shard, rows in self._shards(ctx):
            keys = [r["key"] for r in rows]
            if shard in redo:
                spots = write_shard(ctx.out_dir / shard, ((r["key"], self.record(ctx, r), ctx.read_staged(r["key"]))
                                                          for r in rows))  # one sample's bytes at a time
            else:  # intact: its members say where each clip's bytes are
                where = {m.name: (m.offset_data, m.size) for m in _members(ctx.out_dir / shard)}
                spots = [where[f"{k}.mp4"] for k in keys]
            query.arrow(con, "_spots_part", pa.table({"key": pa.array(keys, pa.string()),
                                                      "offset": pa.array([o for o, _ in spots], pa.int64()),
                                                      "size": pa.array([n for _, n in spots], pa.int64())}))
            con.execute("INSERT INTO _spots SELECT * FROM _spots_part")
        ctx.clips = clips
        sql = ("SELECT w.* EXCLUDE (_shard), w._shard AS shard, w._shard AS file, s.\"offset\", s.size FROM _wds w "
               "JOIN _spots s USING (key) ORDER BY w.bucket, w.key")
        for batch in query.batches(con, sql):
            yield index_rows(batch)

    @staticmethod
    def record(ctx: Context, row: dict) -> dict:
        """The sample's record: the manifest row, its bucket and its shard (+ the clip_* values, see Context)."""
        return {**ctx.record(row), "shard": row["_shard"]}

    def _unpack(self, ctx: Context) -> None:
        """Copy clips that live only in shards being rewritten back to staging (before any is rewritten)."""
        sql = (f"SELECT _held_shard, key, _held_offset, _size FROM {ctx.clips} WHERE NOT _staged AND _shard IN "
               "(SELECT s FROM _todo_shards) ORDER BY _held_shard, _held_offset")
        for batch in query.batches(ctx.con, sql):
            for shard, key, offset, size in zip(*(batch.column(i).to_pylist() for i in range(4))):
                with storage.open_read(ctx.out_dir / shard) as f:
                    f.seek(offset)
                    storage.write_bytes(ctx.staging / f"{key}.mp4", f.read(size))

    def files(self, con, index: str) -> list[str]:
        return [r for r, in con.execute(f"SELECT DISTINCT file FROM {index} ORDER BY file").fetchall()]

    def describe(self, clips: int, files: list, out_dir) -> FormatInfo:
        shards = sorted(files)
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
