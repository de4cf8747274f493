"""`split_videos`: a folder of raw videos -> OUT_DIR/clips.parquet + OUT_DIR/failed.jsonl, resumable.

The split stage on `index.engine`: a unit is one source *content* (its sha256, cached by file identity in
OUT_DIR/.shotcap/hashes.jsonl, so a re-run reads only new or changed files), processed by a worker that loads the
detector once: one decode, shots, clip policy, optional cutting. Bad input (unreadable, not a video, too short)
is that unit's failure; a bug stops the run.

Exact copies (the same bytes under several names) are recognised by their hash before any decode: the first
path in sorted order is split, the others are listed in OUT_DIR/copies.jsonl, so every clip_id is on one row.
The manifest describes RAW_DIR as it is at each run: a file whose content changed is split again and its old
clips and failure leave the manifest, as do a deleted file's (their parts stay under OUT_DIR/.parts and are reused
if that content comes back, under whichever name it then has).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from index import query, storage
from index.engine import BadInput, EngineOptions, Output, Stage, Unit, UsageError, run_stage
from index.files import HashCache, OutputLock, command_line
from index.manifest import (PartStore, display_path, failure, write_failed, write_manifest, write_provenance,
                            write_stream)
from index.parts import UNIT
from index.record import CORE_COLUMNS
from index.video import clip_rate, cut_clips

from .detectors import DEFAULT_DETECTOR, detect_shots_decoded, make_detector
from .policy import ClipPolicy, explain_no_clips, shots_to_clips

STAGE = "split"
VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m2v", ".ts", ".mts",
              ".m2ts", ".flv", ".wmv", ".3gp", ".ogv", ".vob", ".mxf", ".dv"}
CLIPS_NAME = "clips.parquet"
COPIES_NAME = "copies.jsonl"


def find_videos(raw_dir, exclude=None) -> list[tuple]:
    """(path, relative path, listing info) of every video file under raw_dir (a folder or a URL), sorted, hidden
    entries and the folder `exclude` skipped."""
    raw = storage.location(raw_dir)
    raw = raw if storage.is_remote(raw) else raw.absolute()
    out = []
    for p, info in storage.walk_files(raw, skip=exclude):
        if p.suffix.lower() in VIDEO_EXTS:
            rel = p.relative_to(raw).as_posix() if not storage.is_remote(p) else str(p)[len(str(raw)):].lstrip("/")
            out.append((p, rel, info))
    return out


def unit_key(sha: str) -> str:
    return sha[:40]


@dataclass
class Sources:
    """RAW_DIR as it is now: one path per content, the copies, and the files that cannot be used."""
    first: dict = field(default_factory=dict)  # sha -> path split for it (first in sorted order)
    copies: list = field(default_factory=list)  # {"path", "copy_of", "video_sha256"}
    failures: list = field(default_factory=list)
    files: int = 0


def list_sources(raw, out, hashes: HashCache) -> Sources:
    src = Sources()

    def named():
        for path, rel, info in find_videos(raw, exclude=out):
            src.files += 1
            try:
                str(path).encode("utf-8")
            except UnicodeEncodeError:  # no manifest, Parquet or JSON consumer can hold this name as text
                src.failures.append(failure(path, STAGE, "file name is not valid UTF-8; rename the file"))
                continue
            yield path, info  # on a store, the listing's entry says whether it changed

    for path, _, sha in hashes.sha256_many(named()):  # several files read at once
        if isinstance(sha, BadInput):
            src.failures.append(failure(path, STAGE, str(sha)))
            continue
        if sha in src.first:
            src.copies.append({"path": str(path), "copy_of": src.first[sha], "video_sha256": sha})
        else:
            src.first[sha] = str(path)
    return src


# ---------------------------------------------------------------- the stage

class SplitStage(Stage):
    name = STAGE
    unit_name = "videos"
    driver_only = ("sources",)

    def __init__(self, sources: Sources, detector: str, options: dict, policy: ClipPolicy, clips_dir: str | None):
        self.sources = sources
        self.detector, self.options, self.policy, self.clips_dir = detector, options, policy, clips_dir

    def units(self) -> list[Unit]:
        return [Unit(unit_key(sha), path, data=sha) for sha, path in sorted(self.sources.first.items(),
                                                                            key=lambda kv: kv[1])]

    def load(self):
        return make_detector(self.detector, **self.options)

    def process(self, detector, unit: Unit) -> Output:
        path, sha = unit.path, unit.data
        try:
            shots, decoded = detect_shots_decoded(path, detector)
        except MemoryError:
            raise BadInput("out of memory while decoding") from None
        clips = shots_to_clips(shots, decoded, path, sha, self.policy)
        if not clips:
            raise BadInput(explain_no_clips(shots, decoded, self.policy))
        rows = [c.to_dict() for c in clips]
        if self.clips_dir is not None:
            folder = storage.location(self.clips_dir)
            dsts = [folder / f"{c.clip_id}.mp4" for c in clips]
            storage.makedirs(folder)
            cut_clips(path, [(c.start_frame, c.end_frame) for c in clips], dsts,
                      fps=[clip_rate(c.num_frames, c.start_sec, c.end_sec, decoded.fps) for c in clips])
            for row, dst in zip(rows, dsts):
                row["clip_path"] = str(dst)
        return Output(pd.DataFrame(rows))

    def merge(self, store: PartStore, out) -> dict:
        """Write OUT/clips.parquet: the clips of RAW_DIR's current contents, each under the path it has now, sorted
        by path and frame (streamed), and failed.jsonl; returns the counts (clips, hours, failures)."""
        keys = {unit_key(sha): sha for sha in self.sources.first}
        with query.connect() as con:
            query.arrow(con, "_now", pa.table({"sha": list(self.sources.first),
                                               "path": list(self.sources.first.values())}))
            sql = query.part_rows(con, store, keys=set(keys))
            if sql is None or "clip_id" not in query.names_of(con, sql):  # no batch holds a clip
                write_manifest(pd.DataFrame(columns=list(CORE_COLUMNS)), out / CLIPS_NAME)
                clips, hours = 0, 0.0
            else:
                names = [c for c in query.names_of(con, sql) if c != UNIT]
                cols = ", ".join("n.path AS video_path" if c == "video_path" else f"p.{query.ident(c)}" for c in names)
                ordered = query.Sorted(f"SELECT {cols} FROM ({sql}) p JOIN _now n ON p.video_sha256 = n.sha",
                                       ["video_path", "start_frame", "clip_id"])
                clips = write_stream(query.batches(con, ordered), out / CLIPS_NAME)
                hours = query.hours(con, out / CLIPS_NAME)
        fails = sorted(store.failure_records(keys=set(keys)) + self.sources.failures,
                       key=lambda r: (r["path"], r["reason"]))
        write_failed(out, fails)
        return {"clips": clips, "hours": hours, "failures": fails}


def split_videos(raw_dir, out_dir, detector: str = DEFAULT_DETECTOR, workers: int = 1,
                 min_sec: float = 2.0, max_sec: float = 20.0, trim_frames: int = 1, cut: bool = False,
                 detector_options: dict | None = None, progress: bool = True,
                 summary: dict | None = None, engine: EngineOptions | None = None,
                 retry_failed: bool = False, rehash: bool = False) -> tuple:
    """Split every video under raw_dir (a folder or a URL) into OUT_DIR/clips.parquet; returns the manifest's
    location and the failure records.

    Re-running on the same folders finishes missing videos only (and failed ones with `retry_failed`; every
    file hashed again with `rehash`). `summary`, when given, is filled with counts (videos, processed, skipped,
    copies, clips, hours, failures, hashed: files read in full). `engine`: `index.engine.EngineOptions`
    (workers, local or Ray); `workers` is a shorthand for a local engine with that many processes.
    """
    raw, out = storage.location(raw_dir), storage.location(out_dir)
    storage.check_store(raw, "input")
    storage.check_store(out, "output")
    if not storage.is_dir(raw):
        raise UsageError(f"{raw_dir}: not a directory")
    options = dict(detector_options or {})
    try:
        make_detector(detector, **options)  # bad options are a usage error here, not a failure of every video
        policy = ClipPolicy(float(min_sec), float(max_sec or 0), int(trim_frames))
    except ValueError as e:
        raise UsageError(str(e)) from None
    engine = engine or EngineOptions(workers=max(1, int(workers)), progress=progress)
    config = {"detector": detector, "detector_options": options, **policy.to_dict(), "cut": bool(cut)}
    with OutputLock(out, command_line(), "split-videos"):
        store = PartStore(out, STAGE, config=config, retry_failed=retry_failed)
        with HashCache(out, rehash=rehash) as hashes:
            sources = list_sources(raw, out, hashes)
        clips_dir = (str(out / "clips") if storage.is_remote(out) else str((out / "clips").absolute())) if cut else None
        stage = SplitStage(sources, detector, options, policy, clips_dir)
        report = run_stage(stage, store, engine)
        counts = stage.merge(store, out)
        write_provenance(out, STAGE, {**config, "raw_dir": str(raw) if storage.is_remote(raw) else str(raw.resolve())})
        storage.write_text(out / COPIES_NAME, "".join(json.dumps({**c, "path": display_path(c["path"])},
                                                                 ensure_ascii=False) + "\n" for c in sources.copies))
    if summary is not None:
        summary.update(videos=sources.files, processed=report.done, skipped=report.skipped,
                       copies=len(sources.copies), clips=counts["clips"], hours=counts["hours"],
                       failures=len(counts["failures"]), hashed=hashes.hashed)
    return out / CLIPS_NAME, counts["failures"]
