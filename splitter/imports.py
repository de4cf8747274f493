"""`import-clips FORMAT METADATA --videos DIR_OR_URL -o OUT_DIR`: a published dataset's clips as a shotcap manifest.

FORMAT is one of `splitter.importers.IMPORTERS` (panda70m, webvid, msrvtt, internvid, opensora-csv, video2dataset).
Writes OUT_DIR/clips.parquet with the rows split-videos writes, OUT_DIR/failed.jsonl and provenance.json.

How a span becomes a clip. The metadata's times are seconds from the video's first frame. Each local video is
decoded once by the same reader split-videos uses (`splitter.base.ShotDetector.detect`: PTS-based times, the
measured rate of a VFR file, the display size after rotation and sample aspect ratio). A time goes to the nearest
frame boundary (a frame's PTS, or the end of the last frame), so '0:00:03.237' is frame 97 of a 29.97 fps video
(3.2366 s) whatever the rounding, and a VFR file's frames are found by their own times, never by time * fps. A span
ending more than half a frame past the video's end is a failure, never a clip cut short. The clip policy
(--min-sec, --max-sec chunking) is the splitter's own (`shots_to_clips`); by default every span is one clip.

The stage runs on `index.engine` as split-videos does: one unit per local video (its content hash, cached by file
identity, and its spans name the unit), so a re-run is a no-op, a killed run resumes, and videos added to the
folder are the only ones imported by the next run. The metadata is streamed into a DuckDB table (spilling to disk)
where it is paired with the videos' listing, so a file of millions of rows is never held in Python: a row whose
video is missing is recorded by one query.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict

import numpy as np
import pandas as pd
import pyarrow as pa

from index import query, storage
from index.engine import BadInput, EngineOptions, Output, Stage, Unit, UsageError, add_engine_args, \
    options_from_args, run_stage
from index.files import HashCache, OutputLock, command_line
from index.manifest import PartStore, add_retry_arg, run_cli, write_failed, write_manifest, write_provenance, \
    write_stream
from index.record import CORE_COLUMNS

from .base import Decoded, Shot, ShotDetector
from .importers import IMPORTERS, MetadataError, Problem, Span, make_importer
from .pipeline import CLIPS_NAME, VIDEO_EXTS
from .policy import ClipPolicy, shots_to_clips

STAGE = "import"
PROMPT_ID = "imported"  # the prompt_id of a caption that came with the dataset (caption_model: the dataset's name)
PICKS = ("first", "longest", "random-seeded")
CUT_TOLERANCE = 1.0  # seconds a file that is the clip already may differ from the span's length (WebVid: whole s)
CHUNK = 50_000  # spans, listing entries or keys inserted into DuckDB at once
CHUNKS = 1_000_000  # at most this many clips cut from one span by --max-sec (an order key: seq * CHUNKS + chunk)
_SPANS = pa.schema([("seq", pa.int64()), ("row", pa.int64()), ("where", pa.string()), ("clip", pa.int64()),
                    ("source_id", pa.string()), ("path", pa.string()), ("rel", pa.string()),
                    ("start", pa.float64()), ("end", pa.float64()), ("cut", pa.string()),
                    ("captions", pa.string()), ("meta", pa.string())])
_CUT = {True: "yes", False: "no", None: "auto"}
_IDENTITY = ("type", "size", "ETag", "etag", "md5Hash", "LastModified", "mtime")  # what index.storage.remote_identity reads


# ---------------------------------------------------------------- spans -> frames

class Timeline(ShotDetector):
    """The splitter's one decode, looking at nothing: `detect` gives every frame's PTS, the measured rate and the
    display size exactly as split-videos has them (frames are converted at a token size, for speed)."""

    name = "timeline"

    def decode_size(self, width: int, height: int):
        return (16, 16)

    def transitions(self, frames, fps: float):
        for _ in frames:
            pass
        return []


def boundaries(decoded: Decoded) -> np.ndarray:
    """Frame k begins at boundary k; boundary n (n frames) is the end of the last frame."""
    return np.append(decoded.pts, decoded.end_time(decoded.num_frames))


def nearest(bounds: np.ndarray, t: float) -> int:
    """The boundary nearest to time `t` (a tie goes to the later one)."""
    k = int(np.searchsorted(bounds, t, side="left"))
    if k == 0:
        return 0
    if k >= len(bounds):
        return len(bounds) - 1
    return k if bounds[k] - t <= t - bounds[k - 1] else k - 1


def resolve(span: dict, decoded: Decoded, bounds: np.ndarray | None = None) -> tuple[int, int]:
    """[start_frame, end_frame) of a span in this video, or BadInput with the one-line reason."""
    bounds = boundaries(decoded) if bounds is None else bounds
    n = decoded.num_frames
    length = bounds[-1]
    start, end, cut = span["start"], span["end"], span["cut"]
    if cut == "auto":  # MSR-VTT: the release's files are the clips, a full YouTube download is not
        cut = "yes" if (start is not None and end is not None and abs(length - (end - start)) <= CUT_TOLERANCE
                        and end > length + CUT_TOLERANCE) else "no"
    if cut == "yes":
        want = (end - start) if start is not None and end is not None else None
        if want is not None and length + CUT_TOLERANCE < want:
            raise BadInput(f"video is {length:.3f} s, shorter than its clip ({want:.3f} s): a truncated download?")
        return 0, n
    t0 = 0.0 if start is None else float(start)
    t1 = length if end is None else float(end)
    half = (bounds[-1] - bounds[-2]) / 2 if n else 0.0
    if t1 > length + half + 1e-6:
        raise BadInput(f"span {t0:.3f}-{t1:.3f} s ends past the video's end ({length:.3f} s)")
    a, b = nearest(bounds, t0), nearest(bounds, t1)
    if b <= a:
        raise BadInput(f"span {t0:.3f}-{t1:.3f} s holds no frame of the video ({n} frames, {length:.3f} s)")
    return a, b


def pick(captions: list, how: str, seed: int, salt: str) -> str | None:
    """The caption for `caption` among a clip's captions (`captions` keeps them all)."""
    if not captions:
        return None
    if how == "longest":
        return max(captions, key=len)  # the first of the longest
    if how == "random-seeded":  # the same clip gets the same caption whatever the order or the workers
        h = hashlib.sha256(f"{seed}\n{salt}".encode()).digest()
        return captions[int.from_bytes(h[:8], "big") % len(captions)]
    return captions[0]


# ---------------------------------------------------------------- the stage

class ImportStage(Stage):
    """One unit per local video: its spans (from the DuckDB table `_paired`), decoded once, resolved to clips."""

    name = STAGE
    unit_name = "clips"
    driver_only = ("con", "hashes", "problems", "_keys")

    def __init__(self, con, hashes: HashCache, dataset: str, policy: ClipPolicy, caption_pick: str, seed: int):
        self.con, self.hashes = con, hashes
        self.dataset, self.policy, self.caption_pick, self.seed = dataset, policy, caption_pick, int(seed)
        self.problems: list[tuple[str, str]] = []  # (path, reason) found by the driver (a source it cannot read)
        self._keys: list[str] = []
        self.videos = 0

    # ------------------------------------------------------------ driver
    def units(self):
        sql = query.Sorted('SELECT video, info, seq, row, "where", clip, source_id, start, "end", cut, captions, '
                           "meta FROM _paired WHERE video IS NOT NULL AND matches = 1", ["video", "seq"])
        cur, group = None, []
        for batch in query.batches(self.con, sql):
            for r in batch.to_pylist():
                if r["video"] != cur and group:
                    unit = self._unit(group)
                    if unit is not None:
                        yield unit
                    group = []
                cur = r["video"]
                group.append(r)
        if group:
            unit = self._unit(group)
            if unit is not None:
                yield unit
        self.flush_keys()

    def _unit(self, rows: list[dict]) -> Unit | None:
        path, info = rows[0]["video"], json.loads(rows[0]["info"]) if rows[0]["info"] else None
        self.videos += 1
        try:
            sha = self.hashes.sha256(path, info)
        except BadInput as e:
            self.problems.append((path, f"{_rows_text(rows)}: {e}"))
            return None
        spans = [{k: r[k] for k in ("seq", "row", "where", "clip", "source_id", "start", "end", "cut", "captions",
                                    "meta")} for r in rows]
        key = hashlib.sha256(json.dumps([sha, spans], sort_keys=True).encode()).hexdigest()[:32]
        self._keys.append(key)
        if len(self._keys) >= CHUNK:
            self.flush_keys()
        return Unit(key, path, data=(sha, spans), weight=len(spans))

    def flush_keys(self) -> None:
        """The keys of this run's units into `_keys` (the merge takes only their rows and failures)."""
        if self._keys:
            self.con.register("_key_buf", pa.table({"key": pa.array(self._keys, pa.string())}))
            self.con.execute("INSERT INTO _keys SELECT key FROM _key_buf")
            self.con.unregister("_key_buf")
            self._keys = []

    # ------------------------------------------------------------ worker
    def process(self, state, unit: Unit) -> Output:
        sha, spans = unit.data
        try:
            _, decoded = Timeline().detect(unit.path)
        except MemoryError:
            raise BadInput("out of memory while decoding") from None
        bounds = boundaries(decoded)
        rows, failures = [], []
        for sp in spans:
            label = _span_text(sp)
            item = f"{sp['clip']} of {sp['where']}" if sp.get("clip") is not None else f"of {sp['where']}"
            try:
                a, b = resolve(sp, decoded, bounds)
                shot = Shot(round(decoded.end_time(a), 6), round(decoded.end_time(b), 6), a, b)
                clips = shots_to_clips([shot], decoded, unit.path, sha, self.policy)
                if not clips:
                    raise BadInput(f"too short: {shot.end_sec - shot.start_sec:.3f} s < --min-sec "
                                   f"{self.policy.min_sec:g}")
            except BadInput as e:
                failures.append((item, label, str(e)))
                continue
            captions = json.loads(sp["captions"])
            caption = pick(captions, self.caption_pick, self.seed, f"{sp['source_id']}\n{sp['start']}\n{sp['end']}")
            own = {"caption": caption, "captions": captions,
                   "caption_model": self.dataset if caption is not None else None,
                   "prompt_id": PROMPT_ID if caption is not None else None, **json.loads(sp["meta"])}
            for k, c in enumerate(clips):
                rows.append({**c.to_dict(), **own, "_seq": sp["seq"], "_chunk": k, "_where": label})
        if not rows:  # one line for the video: its first span's reason
            first = f"{failures[0][1]}: {failures[0][2]}"
            raise BadInput(first if len(failures) == 1 else f"no clip from its {len(failures)} spans ({first})")
        return Output(pd.DataFrame(rows), [(item, reason) for item, _, reason in failures])

    def merge(self, store: PartStore, out) -> dict:
        """OUT/clips.parquet (metadata order; a clip whose frames another span gave already is a failure, not a
        second row) and failed.jsonl; returns the counts."""
        con = self.con
        self.flush_keys()
        failed = list(store.failures())
        if failed:
            query.arrow(con, "_store_failed", pa.table({"key": [r["key"] for r in failed],
                                                         "path": [r["path"] for r in failed],
                                                         "reason": [r["reason"] for r in failed]}))
            con.execute("INSERT INTO _problems SELECT path, reason FROM _store_failed "
                        "WHERE key IN (SELECT key FROM _keys)")
        if self.problems:
            query.arrow(con, "_driver_failed", pa.table({"path": [p for p, _ in self.problems],
                                                          "reason": [r for _, r in self.problems]}))
            con.execute("INSERT INTO _problems SELECT path, reason FROM _driver_failed")
        files = store.files()
        names = query.names_of(con, f"SELECT * FROM {query.files_sql(con, files)}") if files else []
        if "clip_id" not in names:
            write_manifest(pd.DataFrame(columns=list(CORE_COLUMNS)), out / CLIPS_NAME)
            clips, hours = 0, 0.0
        else:
            # each clip_id once, from its first span in metadata order: an aggregate and joins, which spill
            con.execute(f"CREATE OR REPLACE VIEW _parts AS SELECT *, _seq * {CHUNKS} + _chunk AS _order "
                        f"FROM {query.files_sql(con, files)} WHERE _unit IN (SELECT key FROM _keys)")
            con.execute("CREATE OR REPLACE TABLE _firsts AS SELECT clip_id, min(_order) AS _order FROM _parts "
                        "GROUP BY clip_id")
            con.execute("INSERT INTO _problems SELECT p.video_path, p._where || ': duplicate clip: the same frames of "
                        "the same video as ' || q._where FROM _parts p JOIN _firsts f ON p.clip_id = f.clip_id "
                        "AND p._order <> f._order JOIN _parts q ON q._order = f._order")
            rows = query.Sorted("SELECT p.* FROM _parts p JOIN _firsts f ON p.clip_id = f.clip_id AND p._order = "
                                "f._order", ["_order"], drop=["_unit", "_seq", "_chunk", "_where", "_order"])
            clips = write_stream(query.batches(con, rows), out / CLIPS_NAME)
            hours = query.hours(con, out / CLIPS_NAME)
        n_failed = query.scalar(con, "SELECT count(*) FROM _problems")
        # two narrow columns: DuckDB's own sort spills them in less memory than sorting in pieces (bench/import.py:
        # peak RSS 460 MB against 510 MB at 800k failures)
        write_failed(out, ({"path": p, "stage": STAGE, "reason": " ".join(r.split())[:300]} for batch in
                           query.batches(con, "SELECT path, reason FROM _problems ORDER BY path, reason")
                           for p, r in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist())))
        return {"clips": clips, "hours": hours, "failures": n_failed}


def _span_text(sp: dict) -> str:
    return f"clip {sp['clip']} of {sp['where']}" if sp.get("clip") is not None else sp["where"]


def _rows_text(rows: list[dict]) -> str:
    wheres = sorted({r["where"] for r in rows}, key=lambda w: [r["where"] for r in rows].index(w))
    return ", ".join(wheres[:3]) + (f" and {len(wheres) - 3} more" if len(wheres) > 3 else "")


# ---------------------------------------------------------------- metadata and videos into DuckDB

def load_spans(con, importer, metadata, work, videos, pattern: str | None) -> dict:
    """Stream the reader's spans into `_spans` and its problems into `_problems`; returns counts."""
    con.execute(f"CREATE TABLE _spans ({', '.join(f'{query.ident(f.name)} {_sql_type(f.type)}' for f in _SPANS)})")
    con.execute("CREATE TABLE _problems (path VARCHAR, reason VARCHAR)")
    con.execute("CREATE TABLE _keys (key VARCHAR)")
    buf, problems, counts = [], [], {"spans": 0}
    rows_seen, last_row = 0, None

    def flush():
        if buf:
            con.register("_span_buf", pa.Table.from_pylist(buf, schema=_SPANS))
            con.execute("INSERT INTO _spans SELECT * FROM _span_buf")
            con.unregister("_span_buf")
            buf.clear()
        if problems:
            con.register("_prob_buf", pa.table({"path": [p for p, _ in problems], "reason": [r for _, r in problems]}))
            con.execute("INSERT INTO _problems SELECT * FROM _prob_buf")
            con.unregister("_prob_buf")
            problems.clear()

    for item in importer.read(metadata, work=work):
        if item.row != last_row:
            rows_seen, last_row = rows_seen + 1, item.row
        if isinstance(item, Problem):
            where = str(videos / (item.path or item.source_id)) if (item.path or item.source_id) else str(metadata)
            problems.append((where, f"{item.where}: {item.reason}"))
        else:
            rel = pattern.format(id=item.source_id) if pattern and item.source_id and item.path is None else None
            buf.append({"seq": counts["spans"], "row": item.row, "where": item.where,
                        "clip": item.clip, "source_id": item.source_id, "path": item.path,
                        "rel": rel, "start": item.start, "end": item.end, "cut": _CUT[item.cut],
                        "captions": json.dumps([str(c) for c in item.captions], ensure_ascii=False),
                        "meta": json.dumps(item.meta, ensure_ascii=False, default=str)})
            counts["spans"] += 1
        if len(buf) + len(problems) >= CHUNK:
            flush()
    flush()
    return {"rows": rows_seen, "spans": counts["spans"]}


def _sql_type(t: pa.DataType) -> str:
    return {pa.int64(): "BIGINT", pa.float64(): "DOUBLE"}.get(t, "VARCHAR")


def pair(con, importer, videos, out, pattern: str | None) -> None:
    """`_paired`: each span with its local video (`video`, the listing's `info`, `matches`: how many files fit);
    a span with none, or with several, is a failure of its metadata row, recorded here by one query."""
    if importer.pairing == "path":
        base = str(videos)
        con.execute("CREATE TABLE _paired AS SELECT *, CASE WHEN regexp_matches(path, '^[A-Za-z][A-Za-z0-9+.-]*://') "
                    "OR starts_with(path, '/') THEN path ELSE " + query.quote(base.rstrip("/") + "/") +
                    " || path END AS video, NULL::VARCHAR AS info, 1 AS matches, NULL::VARCHAR AS names FROM _spans")
        return
    con.execute("CREATE TABLE _videos (rel VARCHAR, stem VARCHAR, video VARCHAR, info VARCHAR)")
    buf = []

    def flush():
        if buf:
            con.register("_vid_buf", pa.Table.from_pylist(buf))
            con.execute("INSERT INTO _videos SELECT rel, stem, video, info FROM _vid_buf")
            con.unregister("_vid_buf")
            buf.clear()

    remote = storage.is_remote(videos)
    for loc, info in storage.walk_files(videos, skip=out):
        if loc.suffix.lower() not in VIDEO_EXTS:
            continue
        rel = str(loc)[len(str(videos)):].lstrip("/") if remote else loc.relative_to(videos).as_posix()
        buf.append({"rel": rel, "stem": loc.name[:-len(loc.suffix)], "video": str(loc),
                    "info": json.dumps({k: v for k, v in info.items() if k in _IDENTITY}, default=str)
                    if remote else None})
        if len(buf) >= CHUNK:
            flush()
    flush()
    key, col = ("rel", "rel") if pattern else ("stem", "source_id")
    con.execute(f"CREATE TABLE _paired AS SELECT s.*, CASE WHEN v.n = 1 THEN v.video END AS video, v.info, "
                f"coalesce(v.n, 0) AS matches, v.names FROM _spans s LEFT JOIN (SELECT {key} AS k, min(video) AS video, "
                f"min(info) AS info, count(*) AS n, string_agg(rel, ', ' ORDER BY rel) AS names FROM _videos "
                f"GROUP BY {key}) v ON s.{col} = v.k")
    root = str(videos).rstrip("/") + "/"
    looked = (f"replace({query.quote(pattern)}, '{{id}}', source_id)" if pattern
              else "source_id || '.mp4 or another video extension'")
    missing = f"'no video for ' || source_id || ' under ' || {query.quote(root)} || ' (looked for ' || {looked} || ')'"
    con.execute(f"INSERT INTO _problems SELECT {query.quote(root)} || coalesce(min(rel), min(source_id)), "
                f"min(\"where\") || ' (' || count(*) || CASE WHEN count(*) = 1 THEN ' clip' ELSE ' clips' END || "
                f"'): ' || CASE WHEN min(matches) = 0 THEN min({missing}) ELSE 'several videos fit ' || "
                f"min(source_id) || ' (' || min(names) || '); name the one to use with --pattern' END "
                f"FROM _paired WHERE matches <> 1 GROUP BY row")


# ---------------------------------------------------------------- the command

def import_clips(fmt: str, metadata, out_dir, videos=None, pattern: str | None = None, caption_pick: str = "first",
                 seed: int = 0, dataset_name: str | None = None, min_sec: float = 0.0, max_sec: float = 0.0,
                 progress: bool = True, engine: EngineOptions | None = None, retry_failed: bool = False,
                 rehash: bool = False, summary: dict | None = None):
    """Import a dataset's clips into OUT_DIR/clips.parquet; returns the manifest's location. `summary`, when given,
    is filled with counts (rows, spans, videos, processed, skipped, clips, hours, failures)."""
    importer = make_importer(fmt)
    meta, out = storage.location(metadata), storage.location(out_dir)
    storage.check_store(meta, "input")
    storage.check_store(out, "output")
    if not storage.exists(meta):
        raise UsageError(f"{metadata}: no such file or folder")
    if videos is None:
        if fmt == "video2dataset":
            videos = metadata
        elif fmt == "opensora-csv":
            videos = str(meta.parent)
        else:
            raise UsageError(f"--videos is required for {fmt}: the folder (or URL) holding the downloaded videos")
    vids = storage.location(videos)
    storage.check_store(vids, "input")
    vids = vids if storage.is_remote(vids) else vids.absolute()
    if importer.pairing == "id" and not storage.is_dir(vids):
        raise UsageError(f"{videos}: not a directory")
    if pattern is not None:
        if importer.pairing != "id":
            raise UsageError(f"--pattern pairs videos by id; {fmt} names each video's path itself")
        try:
            ok = "{id}" in pattern and pattern.format(id="x") is not None
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise UsageError(f"--pattern must name the video's path with {{id}} and no other field, e.g. "
                             f"'{{id}}.mp4' or 'clips/{{id}}/video.webm'; got {pattern!r}")
    if caption_pick not in PICKS:
        raise UsageError(f"--caption-pick must be one of {', '.join(PICKS)}, not {caption_pick!r}")
    try:
        policy = ClipPolicy(float(min_sec), float(max_sec or 0), 0)
    except ValueError as e:
        raise UsageError(str(e)) from None
    importer.check(metadata)  # not this format at all: one line, before any work
    dataset = dataset_name or importer.dataset
    engine = engine or EngineOptions(progress=progress)
    config = {"format": fmt, "dataset": dataset, "caption_pick": caption_pick, "seed": int(seed),
              "pattern": pattern, **asdict(policy)}
    with OutputLock(out, command_line(), "import-clips"):
        store = PartStore(out, STAGE, config=config, retry_failed=retry_failed)
        with query.connect() as con:
            counts = load_spans(con, importer, metadata, out / "videos", vids, pattern)
            pair(con, importer, vids, out, pattern)
            with HashCache(out, rehash=rehash) as hashes:
                stage = ImportStage(con, hashes, dataset, policy, caption_pick, seed)
                report = run_stage(stage, store, engine)
                stage.flush_keys()
            merged = stage.merge(store, out)
        write_provenance(out, STAGE, {**config, "metadata": storage.text(meta), "videos": storage.text(vids)})
    if summary is not None:
        summary.update(rows=counts["rows"], spans=counts["spans"], videos=stage.videos, processed=report.done,
                       skipped=report.skipped, clips=merged["clips"], hours=merged["hours"],
                       failures=merged["failures"])
    return out / CLIPS_NAME


def parse_args(argv=None) -> argparse.Namespace:
    formats = "\n".join(f"  {name:14s} {cls.help}" for name, cls in IMPORTERS.items())
    p = argparse.ArgumentParser(prog="import-clips", description=__doc__.split("\n")[0].split(":", 1)[1].strip(),
                                epilog="formats:\n" + formats, formatter_class=_Formatter)
    p.add_argument("format", choices=list(IMPORTERS), metavar="FORMAT", help="the metadata's layout (see below)")
    p.add_argument("metadata", metavar="METADATA", help="the metadata file (a video2dataset output folder), a path or a URL")
    p.add_argument("--videos", default=None,
                   help="folder or URL of the downloaded videos, searched recursively for ID.mp4 or any video "
                        "extension; when not given, video2dataset's folder or the CSV's folder (opensora-csv)")
    p.add_argument("-o", "--out", required=True, help="output folder or URL: clips.parquet, failed.jsonl")
    p.add_argument("--pattern", default=None,
                   help="each video's path under --videos, with {id} for the dataset's id: '{id}.mp4', "
                        "'{id}/video.webm'; when not given, any file named ID.<video extension>")
    p.add_argument("--caption-pick", default="first", choices=PICKS,
                   help="which of a clip's captions goes to `caption` (all are kept in `captions`)")
    p.add_argument("--seed", type=int, default=0, help="seed of --caption-pick random-seeded")
    p.add_argument("--dataset-name", default=None, help="caption_model of the imported captions; when not given, FORMAT")
    p.add_argument("--min-sec", type=float, default=0.0, help="drop clips shorter than this (seconds; recorded)")
    p.add_argument("--max-sec", type=float, default=0.0,
                   help="cut longer clips into near-equal chunks, as split-videos does (seconds; 0: never)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--rehash", action="store_true",
                   help="hash every video again instead of trusting the cached hashes of unchanged files")
    add_retry_arg(p)
    add_engine_args(p, "videos")
    return p.parse_args(argv)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def main(argv=None) -> int:
    return run_cli("import-clips", _main, argv)


def _main(argv=None) -> int:
    args = parse_args(argv)
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    summary: dict = {}
    try:
        manifest = import_clips(args.format, args.metadata, args.out, videos=args.videos, pattern=args.pattern,
                                caption_pick=args.caption_pick, seed=args.seed, dataset_name=args.dataset_name,
                                min_sec=args.min_sec, max_sec=args.max_sec, progress=not args.no_progress,
                                engine=options_from_args(args, not args.no_progress), retry_failed=args.retry_failed,
                                rehash=args.rehash, summary=summary)
    except (UsageError, MetadataError) as e:
        console.print(f"import-clips: error: {' '.join(str(e).split())}", markup=False)
        return 2
    console.print(f"rows {summary['rows']} | spans {summary['spans']} | videos {summary['videos']} (imported now "
                  f"{summary['processed']}, already done {summary['skipped']}) | clips {summary['clips']} | "
                  f"hours {summary['hours']:.3f} | failures {summary['failures']}", markup=False)
    console.print(f"manifest: {manifest}   failures: {storage.location(args.out) / 'failed.jsonl'}", markup=False)
    if summary["clips"] == 0:
        console.print("import-clips: no clip could be imported (reasons in failed.jsonl)", markup=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
