"""`build-shards`: WebDataset tar shards of frame-accurate clip mp4s + their manifest rows.

Layout of SHARDS_DIR (the trainer reads it):
  <bucket>-<n>.tar     samples keyed by clip_id: `<key>.mp4` (the clip, frame 0 = start_frame) and
                       `<key>.json` (the manifest row + bucket); one bucket per shard
  index.parquet        clip_id, key, shard, bucket + the manifest columns, one row per sample
  failed.jsonl         rows that could not be used (missing or changed video, no caption, bad range)
  DATA_CARD.md         see index/card.py

Two steps, both resumable: clips are cut per source video (one decode each) into `.staging/` (each file
complete or absent), then shards are written in a fixed order (bucket, clip_id) from the staged files, each
to a temp name and renamed, so a shard is complete or absent. Tar headers carry no times or owners, so the
same inputs give the same shards, members, order and json bytes. (The mp4 bytes themselves can differ by a
few bytes between runs while `index.video.cut_clips` decodes threaded and libx264 encodes threaded in one
process; the decoded frames and frame counts do not change.) `opensora-csv` keeps the clip files and writes
Open-Sora's CSV instead.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..dedup.groups import load_dedup
from ..files import atomic_write_bytes, atomic_write_text, file_sha256, remove_own_temps, temp_name
from ..manifest import failure, write_failed
from ..video import VideoError, clip_rate, cut_clips

STAGE = "shards"
RES_BUCKETS = ((144, "144p"), (240, "240p"), (360, "360p"), (480, "480p"), (720, "720p"), (1080, "1080p"),
               (1440, "1440p"), (2160, "2160p"))
FRAME_BUCKETS = (16, 32, 64, 128, 256, 512)
ASPECTS = {"9x16": 16 / 9, "3x4": 4 / 3, "1x1": 1.0, "4x3": 3 / 4, "16x9": 9 / 16, "21x9": 9 / 21}  # h / w


def parse_size(text) -> int:
    """'1GB', '500MB', '64KiB', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?i?b?)\s*", str(text).lower())
    if not m:
        raise ValueError(f"bad size {text!r} (e.g. 1GB, 500MB)")
    unit = m.group(2).rstrip("b").rstrip("i")
    return int(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[unit])


def bucket_of(width: int, height: int, num_frames: int) -> str:
    """'360p_16x9_f065-128': resolution by the short side, nearest standard aspect, frame-count range."""
    short = min(int(width), int(height))
    res = next((name for px, name in RES_BUCKETS if short <= px), "4k+")
    ratio = height / width if width else 1.0
    aspect = min(ASPECTS, key=lambda k: abs(math.log(ASPECTS[k]) - math.log(max(ratio, 1e-6))))
    lo = 1
    for hi in FRAME_BUCKETS:
        if num_frames <= hi:
            return f"{res}_{aspect}_f{lo:03d}-{hi:03d}"
        lo = hi + 1
    return f"{res}_{aspect}_f{lo:03d}+"


def safe_key(clip_id) -> str:
    """A WebDataset key: ASCII letters, digits, '_' and '-' only (no dots: they split members)."""
    text = str(clip_id)
    if re.fullmatch(r"[A-Za-z0-9_-]{1,80}", text):
        return text
    import hashlib
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", text)[:60].strip("_") or "clip"
    return f"{clean}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _json_value(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, np.ndarray):
        return [_json_value(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is pd.NA or v is pd.NaT:
        return None
    return v


def row_json(row: dict) -> bytes:
    return json.dumps({k: _json_value(v) for k, v in row.items()}, ensure_ascii=False, sort_keys=True).encode()


def _ustar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header with fixed mode/owner/time, so equal inputs give equal bytes (and it is fast)."""
    h = bytearray(tarfile.BLOCKSIZE)
    raw = name.encode("ascii")
    if len(raw) > 100:
        raise ValueError(f"tar member name too long: {name}")
    h[0:len(raw)] = raw
    h[100:108] = b"0000644\0"  # mode
    h[108:116] = h[116:124] = b"0000000\0"  # uid, gid
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"  # mtime
    h[148:156] = b" " * 8  # checksum placeholder
    h[156:157] = tarfile.REGTYPE
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _tar_member(f, name: str, data: bytes) -> None:
    f.write(_ustar_header(name, len(data)))
    f.write(data)
    f.write(b"\0" * (-len(data) % tarfile.BLOCKSIZE))


def write_shard(path, samples: list[tuple[str, dict, Path]]) -> int:
    """Write one tar (temp name, fsync, rename): (key, manifest row, staged mp4) per sample. Returns bytes."""
    path = Path(path)
    tmp = temp_name(path)
    with open(tmp, "wb", buffering=1 << 20) as f:
        for key, row, mp4 in samples:
            _tar_member(f, f"{key}.mp4", Path(mp4).read_bytes())
            _tar_member(f, f"{key}.json", row_json(row))
        f.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # end of archive, padded to a whole record like tarfile
        f.write(b"\0" * (-f.tell() % tarfile.RECORDSIZE))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


@dataclass
class ShardReport:
    out_dir: Path
    samples: int = 0
    shards: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    dropped: dict = field(default_factory=dict)  # reason -> count
    index: pd.DataFrame | None = None


def _select(df: pd.DataFrame, dedup: bool, index_dir, report: ShardReport) -> pd.DataFrame:
    """Drop rows without caption (failures), duplicates (dedup) and repeated clip ids, in that order."""
    caption = df["caption"] if "caption" in df else pd.Series([None] * len(df), index=df.index)
    no_caption = caption.isna() | (caption.astype(str).str.strip() == "")
    for _, r in df[no_caption].iterrows():
        report.failures.append(failure(r["video_path"], STAGE, f"clip {r['clip_id']}: no caption"))
    df = df[~no_caption]
    if dedup and index_dir is not None:
        table = load_dedup(index_dir)  # a clip indexed twice (two manifests) counts as kept if kept once
        table = table.sort_values("keep", ascending=False, kind="stable").drop_duplicates(["clip_id", "video_path"])
        df = df.drop(columns=[c for c in ("dup_group", "keep") if c in df]).merge(
            table[["clip_id", "video_path", "dup_group", "keep"]], on=["clip_id", "video_path"], how="left")
        unknown = df["keep"].isna()
        if unknown.any():
            report.dropped["not in the index (run index-clips on this manifest)"] = int(unknown.sum())
        df = df[~unknown]
    if dedup and "keep" in df:
        dup = ~df["keep"].astype(bool)
        if dup.any():
            report.dropped["near or exact duplicate"] = int(dup.sum())
        df = df[~dup]
    repeated = df["clip_id"].duplicated(keep="first")  # one sample per key, even with --no-dedup
    if repeated.any():
        report.dropped["repeated clip_id (identical content)"] = int(repeated.sum())
    return df[~repeated]


def _stage(df: pd.DataFrame, staging: Path, report: ShardReport, progress=None, engine=None) -> None:
    """Cut the clips of `df` into staging/<key>.mp4, one decode per source; failures are recorded.
    With `engine.engine == "ray"` Ray actors cut the sources (staging must then be on a shared file system)."""
    groups = df.groupby(["video_path", "video_sha256"], sort=True, dropna=False)  # a row without a hash is not lost
    units = [(path, sha, rows) for (path, sha), rows in groups]

    def record(unit, reason) -> None:
        path, _, rows = unit
        if isinstance(reason, tuple):  # an OSError writing our output in an actor: stops the run, as locally
            raise OSError(*reason)
        for d, (_, r) in zip([staging / f"{safe_key(c)}.mp4" for c in rows["clip_id"]], rows.iterrows()):
            if not d.exists():
                report.failures.append(failure(path, STAGE, f"clip {r['clip_id']}: {reason or 'not cut'}"))
        if progress is not None:
            progress(len(rows))

    if engine is not None and engine.engine == "ray":
        from functools import partial

        from ..engine import run_units
        run_units(units, partial(partial, _stage_remote, staging), record, on_error=record, options=engine,
                  uses_gpu=False)
        return
    for unit in units:
        record(unit, stage_source(staging, unit))


def stage_source(staging: Path, unit: tuple) -> str | None:
    """Cut one source's clips into staging: None, or the one-line reason they could not be cut."""
    path, sha, rows = unit
    dsts = [staging / f"{safe_key(c)}.mp4" for c in rows["clip_id"]]
    if not Path(path).exists():
        return "video missing"
    if file_sha256(path) != sha:
        return "video changed since splitting (sha256 mismatch)"
    try:
        cut_clips(path, list(zip(rows["start_frame"], rows["end_frame"])), dsts,
                  fps=[clip_rate(int(r.end_frame) - int(r.start_frame), float(r.start_sec), float(r.end_sec),
                                 float(r.fps)) for r in rows.itertuples()])
    except VideoError as e:  # the input's fault; an OSError writing our output stops the run
        return str(e)
    except ValueError as e:
        return f"cannot cut clips ({e})"
    return None


def _stage_remote(staging: Path, unit: tuple):
    """`stage_source` in a Ray actor (`partial(partial, _stage_remote, staging)` is the worker factory)."""
    try:
        return stage_source(staging, unit)
    except OSError as e:
        return (e.errno, f"{e.strerror or e} ({e.filename or staging})")


def _list_shards(out_dir: Path) -> dict[str, list[tarfile.TarInfo]]:
    out = {}
    for tar_path in sorted(out_dir.glob("*.tar")):
        try:
            with tarfile.open(tar_path) as tar:
                out[tar_path.name] = tar.getmembers()
        except (tarfile.TarError, OSError):
            tar_path.unlink()  # cannot happen for our atomic writes; a foreign file is not a shard
    return out


def _json_members(tar_path: Path, members: list[tarfile.TarInfo]) -> list[bytes]:
    with tarfile.open(tar_path) as tar:
        return [tar.extractfile(m).read() for m in members if m.name.endswith(".json")]


def plan_shards(df: pd.DataFrame, sizes: dict, shard_size: int) -> pd.DataFrame:
    """Fixed order (bucket, key); a shard closes before it would pass shard_size (>= 1 sample)."""
    df = df.sort_values(["bucket", "key"], kind="stable").reset_index(drop=True)
    names, current, used, count = [], None, 0, 0
    for bucket, key in zip(df["bucket"], df["key"]):
        size = sizes[key] + 2048  # two tar headers, padding and the json
        if current is None or current[0] != bucket or (used + size > shard_size and used > 0):
            count = count + 1 if current is not None and current[0] == bucket else 0
            current, used = (bucket, count), 0
        used += size
        names.append(f"{bucket}-{current[1]:05d}.tar")
    df["shard"] = names
    return df


def build_shards(df: pd.DataFrame, out_dir, index_dir=None, dedup: bool = True, shard_size: int = 10**9,
                 fmt: str = "webdataset", progress=None, engine=None) -> ShardReport:
    """The whole step on a manifest DataFrame; see the module docstring."""
    if fmt not in ("webdataset", "opensora-csv"):
        raise ValueError(f"unknown format {fmt!r} (webdataset, opensora-csv)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_own_temps(out_dir, out_dir / ".staging", out_dir / "clips")
    try:
        return _build(df, out_dir, index_dir, dedup, shard_size, fmt, progress, engine)
    except BaseException:
        remove_own_temps(out_dir, out_dir / ".staging", out_dir / "clips")  # an interrupted write leaves nothing
        raise


def _build(df, out_dir: Path, index_dir, dedup: bool, shard_size: int, fmt: str, progress,
           engine=None) -> ShardReport:
    report = ShardReport(out_dir)
    df = _select(df.reset_index(drop=True), dedup, index_dir, report)
    df = df.assign(key=[safe_key(c) for c in df["clip_id"]],
                   bucket=[bucket_of(w, h, n) for w, h, n in zip(df["width"], df["height"], df["num_frames"])])
    staging = out_dir / ("clips" if fmt == "opensora-csv" else ".staging")
    staging.mkdir(exist_ok=True)
    existing = _list_shards(out_dir) if fmt == "webdataset" else {}
    in_tar = {m.name[:-4]: (name, m) for name, members in existing.items() for m in members
              if m.name.endswith(".mp4")}
    staged = lambda k: (staging / f"{k}.mp4").exists()  # noqa: E731
    mask = lambda f: np.fromiter((f(k) for k in df["key"]), bool, len(df))  # noqa: E731  (also when empty)
    _stage(df[mask(lambda k: not staged(k) and k not in in_tar)], staging, report, progress, engine)
    df = df[mask(lambda k: staged(k) or k in in_tar)]
    if fmt == "opensora-csv":
        _write_opensora(df, staging, out_dir)
    else:
        sizes = {k: (staging / f"{k}.mp4").stat().st_size if staged(k) else in_tar[k][1].size for k in df["key"]}
        df = plan_shards(df, sizes, shard_size)
        groups = {shard: rows for shard, rows in df.groupby("shard", sort=True)}
        columns = [c for c in df.columns if c not in ("key", "bucket", "shard")]
        meta = {s: [{**{c: r[c] for c in columns}, "bucket": r["bucket"]} for _, r in rows.iterrows()]
                for s, rows in groups.items()}
        # a shard is complete or absent: keep it if it holds these clips with this metadata, else rewrite it
        todo = [s for s, rows in groups.items()
                if [m.name for m in existing.get(s, [])] != [f"{k}.{e}" for k in rows["key"] for e in ("mp4", "json")]
                or _json_members(out_dir / s, existing[s]) != [row_json(m) for m in meta[s]]]
        _unpack([k for s in todo for k in groups[s]["key"] if not staged(k)], in_tar, out_dir, staging)
        for shard in todo:
            keys = groups[shard]["key"]
            write_shard(out_dir / shard, [(k, m, staging / f"{k}.mp4") for k, m in zip(keys, meta[shard])])
        report.shards = sorted(groups)
        for stale in set(existing) - set(groups):  # shards of an earlier plan (other inputs or size)
            (out_dir / stale).unlink()
        front = ["clip_id", "key", "shard", "bucket"]
        index = df[front + [c for c in df.columns if c not in front]]
        atomic_write_bytes(out_dir / "index.parquet", index.to_parquet(index=False))
        shutil.rmtree(staging, ignore_errors=True)
    report.index = df
    report.samples = len(df)
    write_failed(out_dir, report.failures)
    return report


def _unpack(keys: list[str], in_tar: dict, out_dir: Path, staging: Path) -> None:
    """Copy clips that live only in existing shards back to staging (their shard is being rewritten)."""
    by_tar: dict[str, list[str]] = {}
    for k in keys:
        by_tar.setdefault(in_tar[k][0], []).append(k)
    for name, ks in by_tar.items():
        with tarfile.open(out_dir / name) as tar:
            for k in ks:
                atomic_write_bytes(staging / f"{k}.mp4", tar.extractfile(in_tar[k][1]).read())


def _write_opensora(df: pd.DataFrame, clips_dir: Path, out_dir: Path) -> None:
    """Open-Sora's CSV: path,text,num_frames,height,width,aspect_ratio,fps,resolution (path: the clip file)."""
    csv = pd.DataFrame({
        "path": [str((clips_dir / f"{k}.mp4").resolve()) for k in df["key"]],
        "text": df["caption"].astype(str).to_numpy(),
        "num_frames": df["num_frames"].astype(int).to_numpy(),
        "height": df["height"].astype(int).to_numpy(), "width": df["width"].astype(int).to_numpy(),
        "aspect_ratio": df["aspect_ratio"].astype(float).to_numpy(), "fps": df["fps"].astype(float).to_numpy(),
        "resolution": (df["height"] * df["width"]).astype(int).to_numpy(),
    }).sort_values("path", kind="stable")
    atomic_write_text(out_dir / "opensora.csv", csv.to_csv(index=False))
    keep = set(df["key"])
    for stale in clips_dir.glob("*.mp4"):
        if stale.stem not in keep:
            stale.unlink()
