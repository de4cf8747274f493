"""`review-clips DIR -o review/`: a static page to look at a clip set before training on it.

DIR is a shards folder from build-shards (index.parquet, failed.jsonl, *.tar), a manifest folder (clips.parquet
from split-videos, caption-videos or index-clips) or a manifest file, on disk or at a URL (s3://...: the shards'
members are read by ranged reads). The page opens from disk (file://), offline, without a server or a build step:

  review/index.html     the page; app.js and style.css beside it (plain JavaScript, from review_page/)
  review/data.js        every clip's caption, flags, scores and source, as columns (`window.REVIEW = {...}`: a
                        <script>, since browsers refuse fetch() on file://)
  review/previews/      one looping animated WebP per clip (at most --preview-kb), loaded as its tile scrolls in
  review/failed.jsonl   clips whose preview could not be made, with the reason

The page holds at most --sample clips (default 20,000): a larger input is sampled by DuckDB as it streams the
rows (the clips whose md5(clip_id) is smallest, the same ones every run, shown in input order), so neither the
command nor the page holds a whole corpus; the page says how many rows the input had.

In the page: tiles in pages, sorted and filtered by any score, flag or category; a threshold pair per numeric
column saying how many clips and hours remain with it alone (and all together, as a pandas query); duplicate
groups side by side with the clip kept marked; the failures with their reasons.

Duplicates: the dedup index (INDEX_DIR/clips.parquet from index-clips: --index, or DIR/index when present) adds
the dropped members of each duplicate group that has a clip on the page (found by a join: the index's other rows
are not read). Their previews come from the source
videos (video_path, start_frame..end_frame).

Previews: one sequential decode per source (a shard's mp4 member, read at its `offset` when index.parquet records
it; or a source video serving all its clips), run by the engine (`--workers`). Each is written atomically and a
re-run makes only the missing ones. Previews of clips no longer on the page, or made with other preview options,
are deleted: they are this command's own files.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pyarrow as pa

from .. import query, storage
from ..engine import BadInput, Interrupted, Output, Stage, Unit, add_engine_args, options_from_args, run_stage
from ..files import OutputLock, atomic_write_bytes, atomic_write_text, command_line, remove_own_temps
from ..manifest import failure, read_failed, run_cli, write_failed
from ..video import VideoError, iter_many, read_frames, sample_indices
from .build import safe_key

STAGE = "review"
ASSETS = Path(__file__).with_name("review_page")
PAGE_FILES = ("app.js", "style.css", "index.html")  # index.html last: a page is never newer than its parts
SCORES = ("motion", "motion_max", "sharpness", "brightness", "black_frac", "text_area", "bpp", "aesthetic",
          "text_match", "nsfw")  # shown first, in this order; any other numeric column is a score too
PROPERTIES = ("duration", "num_frames", "width", "height", "fps", "caption_tokens")
HIDDEN = {"start_frame", "end_frame", "start_sec", "end_sec", "dup_group", "keep", "offset", "size",
          "aspect_ratio", "caption_retries", "x_batch", "extra", "dropped",
          "clip_num_frames", "clip_fps", "clip_width", "clip_height"}  # the written clip's (build-shards' clip options)
TEXT = {"clip_id", "key", "file", "video_path", "video_sha256", "caption", "caption_flags", "clip_path",
        "frame_times", "shard", "x_frame_hash"}
MAX_CATEGORIES = 50
SAMPLE = 20_000


class ReviewError(ValueError):
    """A usage error, one line (exit status 2)."""


# ---------------------------------------------------------------- input

def _sample_sql(src: str, order: str, total: int, sample: int | None, where: str = "true") -> str:
    """Rows of relation `src` in input order (`order`), at most `sample` of them: those of smallest md5(clip_id)."""
    sql = f"SELECT *, row_number() OVER (ORDER BY {order}) AS _o FROM {src} WHERE {where}"
    if sample is not None and total > sample:
        sql = (f"SELECT * FROM ({sql}) QUALIFY row_number() OVER (ORDER BY md5(CAST(clip_id AS VARCHAR)), _o) "
               f"<= {int(sample)}")
    return f"SELECT * EXCLUDE (_o) FROM ({sql}) ORDER BY _o"


def _read_table(path, sample: int | None = None, where: str = "true", con=None) -> tuple[pd.DataFrame, int]:
    """(rows of the table, at most `sample` of them, matching `where`; how many rows it has), read by DuckDB."""
    from ..manifest import manifest_files

    loc = storage.location(path)
    try:
        with contextlib.ExitStack() as stack:
            if con is None:
                con = stack.enter_context(query.connect())
            if loc.suffix.lower() in (".jsonl", ".csv"):
                with storage.open_read(loc) as f:
                    small = pd.read_json(f, lines=True) if loc.suffix.lower() == ".jsonl" else pd.read_csv(f)
                query.arrow(con, "_review_small", pa.Table.from_pandas(small, preserve_index=False))
                src, order, extra = "_review_small", "rowid", ""
            else:
                src = query.files_sql(con, manifest_files(loc), order=True)
                order, extra = "filename, file_row_number", " EXCLUDE (filename, file_row_number)"
            names = query.names_of(con, f"SELECT * FROM {src}")
            if "clip_id" not in names:
                raise ReviewError(f"{path}: no clip_id column; give a shards folder or a manifest")
            total = int(query.scalar(con, f"SELECT count(*) FROM {src} WHERE {where}"))
            table = con.sql(f"SELECT *{extra} FROM ({_sample_sql(src, order, total, sample, where)})").arrow()
            df = table.read_all().to_pandas()
    except ReviewError:
        raise
    except Exception as e:  # pyarrow, pandas and DuckDB raise many types for a malformed file
        raise ReviewError(f"{path}: not a readable table ({' '.join(str(e).split())[:160]})") from None
    return df.reset_index(drop=True), total


def open_input(path, index=None, sample: int | None = SAMPLE) -> tuple[str, pd.DataFrame, list[dict], object]:
    """(kind 'shards' or 'manifest', its rows (a sample of at most `sample`), its failures, the dedup index folder
    or None); the rows' count in the input is `df.attrs["rows"]`."""
    loc = storage.location(path)
    is_dir = storage.is_dir(loc)
    if is_dir and storage.is_file(loc / "index.parquet"):
        kind, table = "shards", loc / "index.parquet"
    elif is_dir and storage.exists(loc / "clips.parquet"):
        kind, table = "manifest", loc / "clips.parquet"
    elif not is_dir and storage.is_file(loc) and loc.suffix.lower() in (".parquet", ".jsonl", ".csv"):
        kind, table = "manifest", loc
    elif storage.exists(loc):
        raise ReviewError(f"{path}: not a shards folder (index.parquet) or a manifest (clips.parquet, .jsonl, .csv)")
    else:
        raise ReviewError(f"{path}: no such folder or file")
    if index is not None:
        index_dir = storage.location(index)
        if not storage.exists(index_dir / "clips.parquet"):
            raise ReviewError(f"{index_dir}: not an index folder (no clips.parquet); run index-clips first")
    else:
        index_dir = loc / "index" if is_dir and storage.exists(loc / "index" / "clips.parquet") else None
    df, total = _read_table(table, sample)
    df.attrs["rows"] = total
    try:
        failures = [{**f, "from": kind} for f in read_failed(table.parent)]
        if index_dir is not None:
            failures += [{**f, "from": "index"} for f in read_failed(index_dir)]
    except ValueError as e:
        raise ReviewError(f"{table.parent}: failed.jsonl is not JSON lines ({e})") from None
    return kind, df, failures, index_dir


def with_duplicates(df: pd.DataFrame, kind: str, index_dir) -> pd.DataFrame:
    """The page's rows: the input's, then the index's other members of their duplicate groups (`extra`).
    `dropped`: not part of the clip set (an extra, or keep=False in a manifest); `sim`: similarity to the one kept.
    Only the index rows of the page's clips and of their groups are read (a join in DuckDB)."""
    rows = df.attrs.get("rows", len(df))
    df = df.assign(extra=False)
    if index_dir is not None:
        with query.connect() as con:
            query.arrow(con, "_page_ids", pa.table({"clip_id": pa.array(df["clip_id"].astype(str).tolist(),
                                                                          pa.string())}))
            clips = storage.location(index_dir) / "clips.parquet"
            from ..manifest import manifest_files

            src = query.files_sql(con, manifest_files(clips))
            names = query.names_of(con, f"SELECT * FROM {src}")
            if "dup_group" not in names or "keep" not in names:
                raise ReviewError(f"{clips}: has no dedup columns; re-run index-clips")
            where = ("CAST(clip_id AS VARCHAR) IN (SELECT clip_id FROM _page_ids) OR (dup_group >= 0 AND dup_group "
                     f"IN (SELECT dup_group FROM {src} WHERE CAST(clip_id AS VARCHAR) IN (SELECT clip_id FROM "
                     "_page_ids)))")
            idx, _ = _read_table(clips, None, where, con)
        on = ["clip_id", "video_path"] if "video_path" in df and "video_path" in idx else ["clip_id"]
        idx = idx.drop_duplicates(on).assign(extra=True)
        df = df.drop(columns=[c for c in ("dup_group", "keep") if c in df]).merge(
            idx[on + ["dup_group", "keep"]], on=on, how="left")
        groups = set(df["dup_group"].dropna()) - {-1}
        others = idx[idx["dup_group"].isin(groups)]
        others = others[~others.set_index(on).index.isin(df.set_index(on).index)]
        df = pd.concat([df, others[[c for c in others.columns if c in df.columns]]], ignore_index=True)
    if "keep" not in df:
        df["keep"] = True
    df["keep"] = df["keep"].map(lambda v: not (isinstance(v, (bool, np.bool_, int, float)) and v == 0)).astype(bool)
    df["dropped"] = df["extra"] if kind == "shards" else (df["extra"] | ~df["keep"])
    if "dup_group" not in df:
        df["dup_group"] = -1
    df["dup_group"] = pd.to_numeric(df["dup_group"], errors="coerce").fillna(-1).astype(int)
    df["sim"] = np.nan
    pairs = storage.location(index_dir) / "pairs.parquet" if index_dir is not None else None
    if pairs is not None and storage.is_file(pairs) and (df["dup_group"] >= 0).any():
        grouped = df.loc[df["dup_group"] >= 0, "clip_id"].astype(str).tolist()
        with query.connect() as con:
            query.arrow(con, "_grouped", pa.table({"clip_id": pa.array(grouped, pa.string())}))
            p = con.sql(f"SELECT clip_id_a, clip_id_b, similarity FROM {query.files_sql(con, [pairs])} WHERE "
                        "CAST(clip_id_a AS VARCHAR) IN (SELECT clip_id FROM _grouped) OR "
                        "CAST(clip_id_b AS VARCHAR) IN (SELECT clip_id FROM _grouped)").arrow().read_all().to_pandas()
        sim = {frozenset((a, b)): s for a, b, s in zip(p["clip_id_a"], p["clip_id_b"], p["similarity"])}
        kept = df[(df["dup_group"] >= 0) & df["keep"]].drop_duplicates("dup_group").set_index("dup_group")["clip_id"]
        df["sim"] = [sim.get(frozenset((c, kept.get(g))), np.nan) if g >= 0 and not k else np.nan
                     for c, g, k in zip(df["clip_id"], df["dup_group"], df["keep"])]
    df.attrs["rows"] = rows
    return df


# ---------------------------------------------------------------- previews

def fit(width, height, box: int) -> tuple[int, int]:
    """(w, h), even, inside a box x box square, keeping the aspect ratio."""
    w, h = float(width or box), float(height or box)
    s = box / max(w, h)
    return max(2, int(round(w * s / 2)) * 2), max(2, int(round(h * s / 2)) * 2)


def encode_webp(frames: np.ndarray, rate: float, budget: int) -> bytes:
    """A looping animated WebP of (T, H, W, 3) frames: lower quality, then fewer frames, then half the size,
    until it fits `budget` bytes (the last try is kept whatever its size)."""
    for quality, step, scale in ((60, 1, 1), (40, 1, 1), (40, 2, 1), (25, 3, 1), (25, 4, 2)):
        part = frames[::step, ::scale, ::scale]
        buf = io.BytesIO()
        with av.open(buf, "w", format="webp", options={"loop": "0"}) as c:
            s = c.add_stream("libwebp_anim", rate=Fraction(max(rate / step, 0.5)).limit_denominator(100))
            s.width, s.height, s.pix_fmt = part.shape[2], part.shape[1], "yuv420p"
            s.options = {"quality": str(quality)}
            for i, img in enumerate(part):
                f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                f.pts = i
                c.mux(s.encode(f))
            c.mux(s.encode())
        if buf.tell() <= budget:
            break
    return buf.getvalue()


def _plan(n: int, seconds: float, frames: int) -> tuple[list[int], float]:
    """Frame indices in [0, n) and the preview's rate (real time for short clips, at most 4 s for long ones)."""
    idx = sample_indices(0, n, num=min(frames, n))
    return idx, min(12.0, max(2.0, len(idx) / min(max(seconds, 0.1), 4.0)))


class Previews(Stage):
    """One unit per source: a shard (its mp4 members) or a source video (its clips' frame ranges)."""

    name = STAGE
    unit_name = "clips"
    driver_only = ("todo",)

    def __init__(self, folder: Path, box: int, frames: int, budget: int, todo: list):
        self.folder, self.box, self.frames, self.budget, self.todo = folder, box, frames, budget, todo

    def units(self) -> list[Unit]:
        return self.todo

    def process(self, state, unit: Unit) -> Output:
        done, failed = [], []
        if "tar" in unit.data:
            for name, got in self._shard_clips(unit.data):
                if isinstance(got, str):
                    failed.append((name, got))
                else:
                    done.append(self._write(name, *got))
        else:
            d = unit.data
            plans = {name: _plan(end - start, sec, self.frames) for name, start, end, sec in d["items"]}
            requests = {name: [start + i for i in plans[name][0]] for name, start, _, _ in d["items"]}
            for name, frames in iter_many(d["video"], requests, size=d["size"]):
                done.append(self._write(name, frames, plans[name][1]))
            made = set(done)
            failed += [(n, "its frames lie past the end of the video") for n in requests if n not in made]
        return Output(pd.DataFrame({"preview": done}), failed)

    def _shard_clips(self, d: dict):
        """(name, (frames, rate)) per clip of one shard, or (name, reason); a clip member is read at its offset
        when the index gives one that holds an mp4, else found in the tar."""
        members = None
        with storage.open_read(d["tar"]) as f:  # a URL: ranged reads of the members asked for
            for name, key, offset, size, n, sec, wh in d["items"]:
                data = b""
                if offset is not None and size:
                    f.seek(offset)
                    data = f.read(size)
                if data[4:8] != b"ftyp":
                    if members is None:
                        f.seek(0)
                        try:
                            with tarfile.open(fileobj=f) as tar:
                                members = {m.name: (m.offset_data, m.size) for m in tar.getmembers()}
                        except tarfile.TarError as e:
                            raise BadInput(f"not a readable tar ({e})") from None
                    if f"{key}.mp4" not in members:
                        yield name, f"no {key}.mp4 in {storage.location(d['tar']).name}"
                        continue
                    f.seek(members[f"{key}.mp4"][0])
                    data = f.read(members[f"{key}.mp4"][1])
                idx, rate = _plan(n, sec, self.frames)
                try:
                    yield name, (read_frames(data, idx, size=fit(*wh, self.box)), rate)
                except VideoError as e:
                    yield name, f"cannot decode {key}.mp4 ({e})"

    def _write(self, name: str, frames: np.ndarray, rate: float) -> str:
        atomic_write_bytes(self.folder / f"{name}.webp", encode_webp(frames, rate, self.budget))
        return name

    def merge(self, store):
        return None


class _Collect:
    """What `run_stage` needs of a store when the outputs are files: a unit is listed only while one of its
    previews is missing, so none counts as done; failures are gathered for failed.jsonl and the tiles."""

    def __init__(self, out: Path):
        self.dir = out / ".shotcap" / STAGE  # named in an interrupt message (its parent's parent), never made
        self.failures: list[tuple[dict, tuple]] = []

    def done(self, key: str) -> bool:
        return False

    def write(self, key: str, rows) -> None:
        pass

    def fail(self, key: str, path, reason: str, ids=()) -> None:
        self.failures.append((failure(path, STAGE, reason), tuple(ids)))


def _num(r: dict, col: str) -> float | None:
    """A row's number, or None when the column is absent or empty."""
    try:
        v = float(r[col])
    except (KeyError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _seconds(r: dict) -> float:
    """A clip's length: end_sec - start_sec, else num_frames / fps, else 2 s."""
    t0, t1, n, fps = _num(r, "start_sec"), _num(r, "end_sec"), _num(r, "num_frames"), _num(r, "fps")
    sec = t1 - t0 if t0 is not None and t1 is not None else (n / fps if n and fps else 0.0)
    return sec if sec > 0 else 2.0


def preview_units(df: pd.DataFrame, folder: Path, shards_dir, box: int) -> tuple[list[Unit], list]:
    """Units for the rows whose preview is missing, and (name, path, reason) for rows that have no source."""
    shard_files = ({n for n, i in storage.listing(shards_dir).items() if i.get("type") == "file"}
                   if shards_dir is not None else set())  # one listing, not a request per shard
    tars: dict[str, list] = {}
    videos: dict[str, list] = {}
    sizes: dict[str, tuple] = {}
    nosource, seen = [], set()
    for r in df.to_dict("records"):
        name = r["name"]
        if name in seen or (folder / f"{name}.webp").exists():
            continue
        seen.add(name)
        wh = (_num(r, "width"), _num(r, "height"))
        tar = shards_dir / str(r["shard"]) if shards_dir is not None and not r["extra"] and r.get("shard") else None
        start, end, n = _num(r, "start_frame"), _num(r, "end_frame"), _num(r, "num_frames")
        if tar is not None and tar.name in shard_files and n:
            offset, size = _num(r, "offset"), _num(r, "size")
            tars.setdefault(str(tar), []).append((name, r.get("key") or safe_key(r["clip_id"]),
                                                  None if offset is None else int(offset), int(size or 0), int(n),
                                                  _seconds(r), wh))
        elif isinstance(r.get("video_path"), str) and start is not None and end is not None and end > start:
            videos.setdefault(r["video_path"], []).append((name, int(start), int(end), _seconds(r)))
            sizes.setdefault(r["video_path"], wh)
        else:
            nosource.append((name, r.get("video_path") or r.get("shard") or name,
                             "no source: no shard file and no video_path with a frame range"))
    units = [Unit(f"tar:{p}", p, {"tar": p, "items": items}, len(items), tuple(i[0] for i in items))
             for p, items in sorted(tars.items())]
    units += [Unit(f"video:{p}", p, {"video": p, "size": fit(*sizes[p], box), "items": items}, len(items),
                   tuple(i[0] for i in items)) for p, items in sorted(videos.items())]
    return units, nosource


def make_previews(df: pd.DataFrame, out: Path, settings: dict, shards_dir, engine) -> list:
    """Write the missing previews; returns the failures as (record, names). Removes our stale previews."""
    folder = out / "previews"
    folder.mkdir(parents=True, exist_ok=True)
    remove_own_temps(folder)
    marker = folder / "settings.json"
    text = json.dumps(settings, sort_keys=True)
    if not marker.is_file() or marker.read_text() != text:
        for p in folder.glob("*.webp"):  # made with other options
            p.unlink()
        atomic_write_text(marker, text)
    wanted = set(df["name"])
    for p in folder.glob("*.webp"):
        if p.stem not in wanted:
            p.unlink()
    units, nosource = preview_units(df, folder, shards_dir, settings["box"])
    store = _Collect(out)
    try:
        run_stage(Previews(folder, settings["box"], settings["frames"], settings["kb"] * 1024, units), store, engine)
    except Interrupted:
        raise Interrupted(f"the {sum(1 for _ in folder.glob('*.webp'))} previews made so far are kept in "
                          f"{folder}") from None
    return store.failures + [(failure(path, STAGE, f"clip {n}: {why}"), (n,)) for n, path, why in nosource]


# ---------------------------------------------------------------- the page

def _numbers(s: pd.Series) -> list:
    """Floats for JSON, 5 significant digits, missing as null."""
    v = pd.to_numeric(s, errors="coerce").astype(float).to_numpy()
    return [float(f"{x:.5g}") if math.isfinite(x) else None for x in v]


def _is(values: pd.Series, kind) -> bool:
    return bool(len(values)) and values.map(lambda v: isinstance(v, kind)).all()


def classify(df: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """Numeric columns (scores first, then clip properties), categorical text columns, boolean flag columns."""
    numeric, cats, bools = [], [], []
    for c in df.columns:
        if c in HIDDEN or c in TEXT or c in ("sim", "name") or not isinstance(c, str):
            continue
        s, vals = df[c], df[c].dropna()
        if pd.api.types.is_bool_dtype(s) or _is(vals, (bool, np.bool_)):
            bools.append(c)
        elif pd.api.types.is_numeric_dtype(s):
            numeric.append(c)
        elif _is(vals, str) and vals.nunique() <= MAX_CATEGORIES:
            cats.append(c)
    rank = {c: i for i, c in enumerate(SCORES)}
    scores = sorted((c for c in numeric if c not in PROPERTIES), key=lambda c: rank.get(c, len(rank)))
    return scores + [c for c in PROPERTIES if c in numeric], cats, bools


def _flags(df: pd.DataFrame, bools: list[str]) -> list[str]:
    """Comma-joined flags per row: the caption checks that failed, boolean columns that are true, no_caption."""
    out = [[] for _ in range(len(df))]
    if "caption_flags" in df:
        for row, text in zip(out, df["caption_flags"]):
            row += [f.strip() for f in str(text).split(",") if f.strip()] if isinstance(text, str) else []
    for c in bools:
        for row, v in zip(out, df[c]):
            if v is True or v is np.True_:
                row.append(c)
    if "caption" in df:
        for row, v in zip(out, df["caption"]):
            if not isinstance(v, str) or not v.strip():
                row.append("no_caption")
    return [",".join(dict.fromkeys(r)) for r in out]


def _texts(df: pd.DataFrame, col: str) -> list:
    if col not in df:
        return None
    return [v if isinstance(v, str) else ("" if v is None or v != v else str(v)) for v in df[col]]


def page_data(df: pd.DataFrame, meta: dict, failures: list[dict], previews: set, reasons: dict) -> dict:
    numeric, cats, bools = classify(df)
    return {**meta, "n": len(df),
            "id": df["clip_id"].astype(str).tolist(), "caption": _texts(df, "caption"), "flags": _flags(df, bools),
            "src": _texts(df, "video_path"), "shard": _texts(df, "shard"),
            "t0": _numbers(df["start_sec"]) if "start_sec" in df else None,
            "t1": _numbers(df["end_sec"]) if "end_sec" in df else None,
            "dup": df["dup_group"].astype(int).tolist(), "keep": df["keep"].astype(bool).tolist(),
            "dropped": df["dropped"].astype(bool).tolist(), "extra": df["extra"].astype(bool).tolist(),
            "sim": _numbers(df["sim"]),
            "pv": [n if n in previews else "" for n in df["name"]], "perr": [reasons.get(n, "") for n in df["name"]],
            "numeric": [{"name": c, "group": "clip" if c in PROPERTIES else "score"} for c in numeric],
            "num": {c: _numbers(df[c]) for c in numeric}, "cats": {c: _texts(df, c) for c in cats},
            "failures": failures}


def write_review(src, out, index=None, previews: dict | None = None, engine=None, title: str | None = None,
                 page_size: int = 48, opened: tuple | None = None, sample: int | None = SAMPLE) -> dict:
    """The whole command on a shards folder or manifest `src`; `previews`: {box, frames, kb} or None for none;
    `opened`: what `open_input(src, index, sample)` returned, when the caller has it already."""
    out = Path(out)
    kind, table, failures, index_dir = opened or open_input(src, index, sample)
    df = with_duplicates(table, kind, index_dir)
    if "start_sec" in df and "end_sec" in df:
        df["duration"] = pd.to_numeric(df["end_sec"], errors="coerce") - pd.to_numeric(df["start_sec"], errors="coerce")
    elif "num_frames" in df and "fps" in df:
        df["duration"] = pd.to_numeric(df["num_frames"], errors="coerce") / pd.to_numeric(df["fps"], errors="coerce")
    df["name"] = [safe_key(c) for c in df["clip_id"].astype(str)]
    out.mkdir(parents=True, exist_ok=True)
    remove_own_temps(out)
    fails = []
    if previews is not None:
        fails = make_previews(df, out, {"format": "webp", **previews},
                              storage.location(src) if kind == "shards" else None, engine)
    write_failed(out, [rec for rec, _ in fails])
    have = {p.stem for p in (out / "previews").glob("*.webp")} if (out / "previews").is_dir() else set()
    reasons = {n: rec["reason"].removeprefix(f"clip {n}: ") for rec, names in fails for n in names}
    loc = storage.location(src)
    name = loc.name if storage.is_remote(loc) else Path(loc).resolve().name
    meta = {"title": title or f"review: {name}", "kind": kind, "input": str(src),
            "index": str(index_dir) if index_dir is not None else None, "page_size": int(page_size),
            "input_rows": int(table.attrs.get("rows", len(table)))}
    failures = failures + [{**rec, "from": STAGE} for rec, _ in fails]
    data = page_data(df, meta, failures, have, reasons)
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    atomic_write_text(out / "data.js", f"window.REVIEW = {text};\n")
    for name in PAGE_FILES:
        atomic_write_bytes(out / name, (ASSETS / name).read_bytes())
    in_set = ~df["dropped"]
    return {"page": (out / "index.html").resolve(), "clips": int(in_set.sum()),
            "hours": float(df.loc[in_set, "duration"].sum() / 3600) if "duration" in df else 0.0,
            "groups": int((df.loc[df["dup_group"] >= 0, "dup_group"].value_counts() > 1).sum()),
            "failures": len(failures),
            "input_rows": meta["input_rows"], "shown": int((~df["extra"]).sum()),
            "previews": sum(1 for n in df["name"].unique() if n in have),
            "no_preview": sum(1 for n in df["name"].unique() if n not in have)}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="review-clips", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description="Write a static page (opens from disk, offline) to look at a clip "
                                             "set: previews, captions, flags, scores, duplicates, failures.")
    ap.add_argument("dir", help="a shards folder from build-shards (index.parquet), a manifest folder "
                                "(clips.parquet) or a manifest file (.parquet, .jsonl, .csv)")
    ap.add_argument("-o", "--out", required=True, help="output folder for the page (index.html, data.js, previews/)")
    ap.add_argument("--index", default=None, metavar="INDEX_DIR",
                    help="dedup index from index-clips, to show dropped duplicates beside the clip kept "
                         "(default: DIR/index when it holds clips.parquet)")
    ap.add_argument("--title", default=None, help="page title (default: 'review: ' + the folder name)")
    ap.add_argument("--page-size", type=int, default=48, help="tiles per page")
    ap.add_argument("--sample", type=int, default=SAMPLE, help="most clips on the page: a larger input is sampled "
                                                                "(the same clips every run), shown in input order")
    ap.add_argument("--preview-px", type=int, default=192, help="previews fit in a square of this many pixels")
    ap.add_argument("--preview-frames", type=int, default=16, help="frames per preview, spread over the clip")
    ap.add_argument("--preview-kb", type=int, default=50, help="size budget per preview (lower quality and "
                                                               "fewer frames until it fits)")
    ap.add_argument("--no-previews", action="store_true", help="make no previews (the page shows those made "
                                                               "before with the same options)")
    add_engine_args(ap, "sources (shards or videos) to make previews from")
    return ap


def _main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        for name, value, lo, hi in (("--page-size", args.page_size, 1, 1000), ("--preview-px", args.preview_px, 32,
                                    1024), ("--preview-frames", args.preview_frames, 1, 64),
                                    ("--preview-kb", args.preview_kb, 4, 10_000), ("--sample", args.sample, 1,
                                                                                   10_000_000)):
            if not lo <= value <= hi:
                raise ReviewError(f"{name} must be between {lo} and {hi}, not {value}")
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ReviewError(f"{args.out}: exists and is not a folder")
        opened = open_input(args.dir, args.index, args.sample)  # usage errors before any work
        src = storage.location(args.dir)
        src = src if storage.is_dir(src) else src.parent
        for folder in (src, opened[3]):
            if folder is not None and not storage.is_remote(folder) and Path(args.out).resolve() == folder.resolve():
                raise ReviewError(f"{args.out}: is an input folder (its failed.jsonl would be replaced); write the "
                                  "page to a folder of its own")
        engine = options_from_args(args)
    except ValueError as e:
        print(f"review-clips: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    previews = None if args.no_previews else {"box": args.preview_px, "frames": args.preview_frames,
                                              "kb": args.preview_kb}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with OutputLock(args.out, command_line(), "review-clips"):
        try:
            rep = write_review(args.dir, args.out, args.index, previews, engine, args.title, args.page_size, opened,
                               args.sample)
        except ReviewError as e:
            print(f"review-clips: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
    hours = f"{rep['hours']:.2f} h" if rep["hours"] >= 1 else f"{rep['hours'] * 60:.1f} min"
    made = "none made (--no-previews)" if previews is None else \
        f"{rep['previews']}, none for {rep['no_preview']} (see failed.jsonl)"
    sampled = (f" (a sample of {rep['shown']} of the input's {rep['input_rows']} rows: --sample)"
               if rep["input_rows"] > rep["shown"] else "")
    print(f"{rep['clips']} clips ({hours}){sampled}, {rep['groups']} duplicate groups, {rep['failures']} failures "
          f"listed; previews: {made}", file=sys.stderr)
    print(rep["page"])
    return 0


def main(argv=None) -> int:
    return run_cli("review-clips", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
