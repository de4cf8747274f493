"""`split_videos`: a folder of raw videos -> OUT_DIR/clips.parquet + OUT_DIR/failed.jsonl, resumable.

Each video is one unit of `index.manifest.PartStore` (key: content hash + relative-path hash), written
by the main process when its worker returns, so a kill at any moment loses at most the videos in flight
and a re-run gives the same manifest as an uninterrupted run. Workers are spawned processes that load
the detector once. Bad input becomes a failure record; it never stops the run.

The manifest describes RAW_DIR as it is at each run: a file whose content changed is split again and its
old clips and failure leave the manifest, as do a deleted file's (their parts stay under OUT_DIR/.parts
and are reused if that content comes back).
"""

from __future__ import annotations

import functools
import hashlib
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

from index.manifest import PartStore, write_failed, write_manifest
from index.files import file_sha256
from index.record import CORE_COLUMNS
from index.video import VideoError, clip_rate, cut_clips

from .detectors import DEFAULT_DETECTOR, DETECTORS, detect_shots_decoded, make_detector
from .policy import ClipPolicy, shots_to_clips

STAGE = "split"
VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m2v", ".ts", ".mts",
              ".m2ts", ".flv", ".wmv", ".3gp", ".ogv", ".vob", ".mxf", ".dv"}
CLIPS_NAME = "clips.parquet"


@dataclass
class Task:
    path: str  # absolute
    rel: str  # relative to RAW_DIR, for the key and messages
    sha: str
    key: str


def find_videos(raw_dir, exclude=None) -> list[tuple[Path, str]]:
    """(absolute path, relative path) of every video file under raw_dir, sorted, hidden entries skipped."""
    raw = Path(raw_dir).absolute()
    skip = Path(exclude).absolute() if exclude else None
    out = []
    for root, dirs, files in os.walk(raw):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (skip is None or Path(root, d) != skip))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in VIDEO_EXTS:
                p = Path(root, name)
                out.append((p, p.relative_to(raw).as_posix()))
    return out


def unit_key(sha: str, rel: str) -> str:
    return f"{sha[:32]}-{hashlib.sha256(rel.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"


# ---------------------------------------------------------------- one video (runs in a worker)

def _init_worker(detector: str, options: dict, threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    make_detector(detector, **options)


def make_unit_worker(detector: str, options: dict, policy: ClipPolicy, clips_dir: str | None):
    """For `index.engine.run_units`: loads the detector once, returns `task -> (status, payload)`."""
    make_detector(detector, **options)
    return functools.partial(process_video, detector=detector, options=options, policy=policy,
                             clips_dir=clips_dir)


def process_video(task: Task, detector: str, options: dict, policy: ClipPolicy,
                  clips_dir: str | None) -> tuple[str, object]:
    """('ok', list of row dicts) or ('fail', one-line reason)."""
    try:
        shots, decoded = detect_shots_decoded(task.path, detector, **options)
        clips = shots_to_clips(shots, decoded, task.path, task.sha, policy)
        if not clips:
            longest = max((decoded.end_time(s.end_frame) - decoded.end_time(s.start_frame) for s in shots),
                          default=0.0)
            return "fail", (f"too short: no clip of at least {policy.min_sec:g} s "
                            f"({len(shots)} shots, longest {longest:.2f} s)")
        rows = [c.to_dict() for c in clips]
        if clips_dir is not None:
            dsts = [Path(clips_dir, f"{c.clip_id}.mp4") for c in clips]
            Path(clips_dir).mkdir(parents=True, exist_ok=True)
            cut_clips(task.path, [(c.start_frame, c.end_frame) for c in clips], dsts,
                      fps=[clip_rate(c.num_frames, c.start_sec, c.end_sec, decoded.fps) for c in clips])
            for row, dst in zip(rows, dsts):
                row["clip_path"] = str(dst)
        return "ok", rows
    except VideoError as e:
        return "fail", str(e)
    except MemoryError:
        return "fail", "out of memory while decoding"
    except Exception as e:  # a decoder or library error on one file must not stop the run
        return "fail", f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------- the run

def split_videos(raw_dir, out_dir, detector: str = DEFAULT_DETECTOR, workers: int = 1,
                 min_sec: float = 2.0, max_sec: float = 20.0, trim_frames: int = 1, cut: bool = False,
                 detector_options: dict | None = None, progress: bool = True,
                 summary: dict | None = None, engine=None,
                 retry_failed: bool = False) -> tuple[pd.DataFrame, list[dict]]:
    """Split every video under raw_dir; returns the merged manifest and the failure records.

    Re-running on the same folders finishes missing videos only (and failed ones with `retry_failed`).
    `summary`, when given, is filled with counts (videos, processed, skipped, clips, hours, failures) for a
    caller's report. `engine`: an `index.engine.EngineOptions`; with `engine="ray"` the videos go to Ray
    actors (parts are still written here, so resume rules and the manifest are the local ones).
    """
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise ValueError(f"{raw_dir}: not a directory")
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; choose one of: {', '.join(DETECTORS)}")
    options = dict(detector_options or {})
    make_detector(detector, **options)  # bad options are a usage error here, not a failure of every video
    policy = ClipPolicy(float(min_sec), float(max_sec or 0), int(trim_frames))
    out = Path(out_dir)
    config = {"detector": detector, "detector_options": options, **policy.to_dict(), "cut": bool(cut)}
    store = PartStore(out, STAGE, config=config, retry_failed=retry_failed)
    clips_dir = str((out / "clips").absolute()) if cut else None

    videos = find_videos(raw, exclude=out)
    todo: list[Task] = []
    skipped = 0
    current: set[str] = set()  # the units of RAW_DIR as it is now: the manifest holds these only
    for path, rel in videos:
        try:
            sha = file_sha256(path)
        except OSError as e:
            key = unit_key("unreadable", rel)
            current.add(key)
            if not store.done(key):
                store.fail(key, str(path), f"cannot read file ({e.strerror or e})")
            continue
        task = Task(str(path), rel, sha, unit_key(sha, rel))
        current.add(task.key)
        if store.done(task.key):
            skipped += 1
        else:
            todo.append(task)

    def record(task: Task, status: str, payload) -> None:
        if status == "ok":
            store.write(task.key, pd.DataFrame(payload))
        else:
            store.fail(task.key, task.path, payload)
        advance(task.rel)

    if engine is not None:
        workers = max(workers, engine.workers)
    args = (detector, options, policy, clips_dir)
    with _progress(progress, len(todo)) as advance:
        if engine is not None and engine.engine != "local":
            from index.engine import run_units

            run_units(todo, functools.partial(make_unit_worker, *args), lambda t, r: record(t, *r),
                      on_error=lambda t, reason: record(t, "fail", reason), options=engine)
        elif workers <= 1 or len(todo) <= 1:
            for task in todo:
                record(task, *process_video(task, *args))
        else:
            _run_pool(todo, workers, args, record)

    df, failures = store.merge(keys=current)  # not a changed file's old clips, nor a deleted file's
    if not len(df):
        df = pd.DataFrame(columns=list(CORE_COLUMNS))
    write_manifest(df, out / CLIPS_NAME)
    write_failed(out, failures)
    if summary is not None:
        hours = float((df["end_sec"] - df["start_sec"]).sum()) / 3600 if len(df) else 0.0
        summary.update(videos=len(videos), processed=len(todo), skipped=skipped, clips=len(df),
                       hours=hours, failures=len(failures))
    return df, failures


def _pool(workers: int, detector, options):
    threads = max(1, (os.cpu_count() or 1) // workers)
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                               initializer=_init_worker, initargs=(detector, options, threads))


def _run_pool(todo, workers, args, record) -> None:
    """Spawned worker processes, each with its detector loaded once; parts are written here."""
    pending, suspects = list(reversed(todo)), []
    while pending:
        with _pool(workers, args[0], args[1]) as pool:
            running = {}
            try:
                while pending or running:
                    while pending and len(running) < 2 * workers:
                        task = pending.pop()
                        try:
                            running[pool.submit(process_video, task, *args)] = task
                        except BrokenProcessPool:  # the pool broke while we were recording: not lost
                            pending.append(task)
                            raise
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        result = fut.result()
                        record(running.pop(fut), *result)
            except BrokenProcessPool:  # a worker died (decoder crash, OOM killer): find which file did it
                suspects += running.values()
    for task in suspects:  # each alone, so one crashing file cannot take others with it
        with _pool(1, args[0], args[1]) as pool:
            try:
                record(task, *pool.submit(process_video, task, *args).result())
            except BrokenProcessPool:
                record(task, "fail", "worker process died while processing this file")


class _progress:
    """A rich progress bar (or nothing); the context value is `advance(label)`."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled and total > 0, total

    def __enter__(self):
        if not self.enabled:
            return lambda label: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("split"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.description}"), transient=False)
        self.bar.__enter__()
        self.task = self.bar.add_task("", total=self.total)

        def advance(label: str) -> None:
            self.bar.update(self.task, advance=1, description=label[-40:])

        return advance

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
        return False
