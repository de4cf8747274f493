"""Cutting the clips of a build: one engine `Stage` whose units are source videos, one decode per source.

A unit is one source video and those of its clips that are neither staged nor already in the output. The
worker decodes the source once and re-encodes each clip by its `ClipPlan`; the encoded mp4 bytes come back to
the driver, which alone writes them (atomically) to SHARDS_DIR/.staging/KEY.mp4. So `--workers N` and
`--engine ray` give the same files, and Ray workers need no view of the output folder.

A plan is the clip's frame range as it is (the default), or what the clip options ask (`ClipOptions`):
- `fps`: a fixed frame rate, by taking the source frame nearest each output frame's time; a source slower
  than that is not sped up or given invented frames: the clip is reported as unfit.
- `frames_4k1`: a frame count of the form 4k+1 (Wan, HunyuanVideo, LTX-Video): the clip's first 4k+1 frames;
  fewer than 5 frames is unfit.
- `side_multiple`: width and height divisible by 16 or 32: a centred crop of at most multiple-1 pixels per
  side; a side shorter than the multiple is unfit.
Nothing is ever stretched: frames are kept or dropped, pixels kept or cropped.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import pandas as pd

from .. import query, storage
from ..engine import BadInput, Output, Stage, Unit
from ..manifest import failure
from ..video import _ClipEncoder, clip_rate, iter_frames

STAGE = "shards"


@dataclass(frozen=True)
class ClipOptions:
    fps: float | None = None
    frames_4k1: bool = False
    side_multiple: int | None = None

    def active(self) -> bool:
        return bool(self.fps or self.frames_4k1 or self.side_multiple)

    def describe(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClipPlan:
    start: int  # source frame range [start, end)
    end: int
    fps: float  # rate of the written clip
    width: int  # size of the written clip (even: H.264 4:2:0 needs it)
    height: int
    frames: tuple | None = None  # source frame indices when resampled; None: every frame of the range
    crop: tuple | None = None  # (x, y, w, h) in the source frame; None: the whole frame

    @property
    def num_frames(self) -> int:
        return len(self.frames) if self.frames is not None else self.end - self.start

    def indices(self):
        return self.frames if self.frames is not None else range(self.start, self.end)


def _even(x: int) -> int:
    return max(2, int(x) - int(x) % 2)


def plan_clip(row, opts: ClipOptions) -> ClipPlan | str:
    """The clip as written for this row, or the one-line reason it cannot meet the options."""
    start, end = int(row["start_frame"]), int(row["end_frame"])
    n = end - start
    rate = clip_rate(n, float(row["start_sec"]), float(row["end_sec"]), float(row["fps"]))
    frames = None
    if opts.fps:
        if opts.fps > rate * 1.005:
            return f"source runs at {rate:.3g} fps, slower than --fps {opts.fps:g} (frames would be invented)"
        step = rate / opts.fps
        count = int(math.floor(n / step + 1e-6))
        frames = tuple(start + min(n - 1, int(round(k * step))) for k in range(count))
        rate = float(opts.fps)
    count = len(frames) if frames is not None else n
    if opts.frames_4k1:
        keep = (count - 1) // 4 * 4 + 1
        if keep < 5:
            return f"{count} frames{' at the --fps rate' if opts.fps else ''}, fewer than 5 (the shortest 4k+1 clip)"
        if frames is not None:
            frames = frames[:keep]
        else:
            end = start + keep
    w, h, crop = int(row["width"]), int(row["height"]), None
    if opts.side_multiple:
        m = int(opts.side_multiple)
        cw, ch = w // m * m, h // m * m
        if cw < m or ch < m:
            return f"{w}x{h} is smaller than --side-multiple {m}"
        if (cw, ch) != (w, h):
            crop = ((w - cw) // 2, (h - ch) // 2, cw, ch)
        w, h = cw, ch
    return ClipPlan(start, end, rate, _even(w), _even(h), frames, crop)


def cut_source(path, plans: list[tuple[str, ClipPlan]]) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    """One sequential decode of `path` serving every plan: ({key: mp4 bytes}, [(key, reason) not cut])."""
    wanted: dict[int, list[int]] = {}
    for k, (_, plan) in enumerate(plans):
        for i in plan.indices():
            wanted.setdefault(int(i), []).append(k)
    left = {k: plan.num_frames for k, (_, plan) in enumerate(plans)}
    encoders: dict[int, _ClipEncoder] = {}
    out: dict[str, bytes] = {}
    seen = 0
    for fr in iter_frames(path, stop=max(wanted, default=-1) + 1, want=wanted):
        seen = fr.index + 1
        for k in wanted[fr.index]:
            key, plan = plans[k]
            img = fr.image
            if plan.crop is not None:
                x, y, w, h = plan.crop
                img = img[y:y + h, x:x + w]
            if k not in encoders:
                encoders[k] = _ClipEncoder(None, plan.fps, img.shape[1], img.shape[0])
            encoders[k].add(img)
            left[k] -= 1
            if not left[k]:
                out[key] = encoders.pop(k).close()
    for enc in encoders.values():  # the source ended inside these clips: nothing partial is kept
        enc.container.close()
    failed = [(key, f"clip range ({plan.start}, {plan.end}) lies beyond the {seen} decodable frames")
              for key, plan in plans if key not in out]
    return out, failed


PLAN_COLUMNS = ("clip_id", "key", "video_path", "video_sha256", "start_frame", "end_frame", "start_sec", "end_sec",
                "fps", "width", "height")


def cut_units(con, todo: str, opts: ClipOptions, bad: set):
    """One unit per source of the relation `todo` (rows with PLAN_COLUMNS), streamed in (path, sha256) order, its
    clips in frame order with their plans; sources in `bad` are left out."""
    cols = ", ".join(query.ident(c) for c in PLAN_COLUMNS)
    sql = f"SELECT {cols} FROM {todo} ORDER BY video_path, video_sha256, start_frame, key"

    def unit(src, items):
        digest = hashlib.sha256(repr((str(src[1]), items)).encode()).hexdigest()[:32]
        return Unit(digest, str(src[0]), data=items, weight=len(items), ids=tuple(c for c, _, _ in items))

    cur, items = None, []
    for batch in query.batches(con, sql, rows=8192):
        for row in batch.to_pylist():
            src = (row["video_path"], row["video_sha256"])
            if src in bad:
                continue
            if src != cur and items:
                yield unit(cur, items)
                items = []
            cur = src
            items.append((str(row["clip_id"]), row["key"], plan_clip(row, opts)))
    if items:
        yield unit(cur, items)


class CutStage(Stage):
    """Units: source videos with clips to cut (streamed); process: `cut_source`; the driver writes (see
    `StagingStore`)."""

    name = STAGE
    unit_name = "clips"
    driver_only = ("_units",)

    def __init__(self, units, total: int | None = None):
        self._units, self._total = units, total

    def units(self):
        return self._units

    def total(self) -> int | None:
        return self._total

    def process(self, state, unit: Unit) -> Output:
        ids = {key: cid for cid, key, _ in unit.data}
        done, failed = cut_source(unit.path, [(key, plan) for _, key, plan in unit.data])
        rows = pd.DataFrame({"key": list(done), "mp4": list(done.values())})
        return Output(rows, [(ids[key], reason) for key, reason in failed])

    def merge(self, store) -> set[str]:
        return store.staged


class StagingStore:
    """What `index.engine.run_stage` writes to: the staged clips (written here, by the driver) and failures.
    Nothing is skipped as done: the units are already only the clips missing from staging and output."""

    def __init__(self, out_dir, staging):
        self.dir = storage.location(out_dir) / ".parts" / STAGE  # named in the Ctrl-C message only
        self.staging = staging
        self.staged: set[str] = set()  # this run's (few: the clips cut now)
        self.failures: list[dict] = []

    def done(self, key: str) -> bool:
        return False

    def write(self, key: str, rows: pd.DataFrame) -> None:
        for k, data in zip(rows["key"], rows["mp4"]):
            storage.write_bytes(self.staging / f"{k}.mp4", bytes(data))  # complete or absent
            self.staged.add(k)

    def fail(self, key: str, path, reason: str, ids=()) -> dict:
        if not reason.startswith("clip "):
            reason = f"{len(ids)} clip{'s' if len(ids) != 1 else ''}: {reason}"
        rec = failure(path, STAGE, reason)
        self.failures.append(rec)
        return rec


def check_sources(con, todo: str, hashes) -> tuple[set, list[dict]]:
    """The (video_path, video_sha256) sources of `todo` that no longer hold the content their clips were made from
    (a HashCache: a stat for an unchanged file, one listing per folder on a store), and one failure for each."""
    bad, fails, listed = set(), [], {}
    sql = f"SELECT video_path, video_sha256, count(*) FROM {todo} GROUP BY ALL ORDER BY ALL"
    for batch in query.batches(con, sql):
        for path, sha, n in zip(*[batch.column(i).to_pylist() for i in range(3)]):
            try:
                info = None
                if storage.is_remote(path):
                    loc = storage.location(path)
                    if str(loc.parent) not in listed:
                        listed[str(loc.parent)] = storage.listing(loc.parent)
                    info = listed[str(loc.parent)].get(loc.name)
                    if info is None:
                        raise BadInput("video missing")
                elif not storage.exists(path):
                    raise BadInput("video missing")
                if hashes.sha256(path, info) != sha:
                    raise BadInput("video changed since it was split (sha256 mismatch)")
            except BadInput as e:
                bad.add((path, sha))
                fails.append(failure(path, STAGE, f"{n} clips: {e}"))
    return bad, fails


def stage_clips(con, todo: str, opts: ClipOptions, out_dir, staging, hashes,
                engine=None) -> tuple[set[str], list[dict]]:
    """Check the sources of the relation `todo` and cut their clips into staging on the engine: (keys staged now,
    failure records)."""
    from ..engine import EngineOptions, run_stage

    bad, failures = check_sources(con, todo, hashes)
    store = StagingStore(out_dir, staging)
    total = query.scalar(con, f"SELECT count(*) FROM {todo}")
    if total:
        storage.makedirs(staging)
        run_stage(CutStage(cut_units(con, todo, opts, bad), total), store, engine or EngineOptions(progress=False))
    return store.staged, failures + store.failures
