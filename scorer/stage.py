"""`ScoreStage`: score-clips on the engine (`index.engine`): one unit per source video, one decode per unit.

- units (driver): `index.query.clip_set_units`, streamed: per source, its clips the output folder has not scored
  yet, so scoring a subset first and the whole manifest later redoes only the new clips;
- load (each worker, once): the scorers' models, the flow estimator, the text detector;
- process (a worker): `score_source`: one demux pass for packet sizes when `bpp` runs (no decode), then ONE
  sequential decode of the source at a 256-pixel short side (its own size when smaller, see `scorer.base`)
  serving every clip (`index.video.iter_many`): per clip its frames sampled at --sample-fps plus the frame after
  each (for flow); every scorer reads those arrays. A clip whose frames the decode never reaches (the file ends
  early) is that clip's failure;
- merge (driver): the input rows plus the score columns (`index.query.join_parts`: no other column is touched),
  streamed to OUT_DIR/clips.parquet, and every failure (bad rows, missing or replaced sources, units, clips) to failed.jsonl.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from index import query, storage
from index.engine import Output, Stage, Unit
from index.manifest import write_failed, write_stream
from index.video import iter_many, sample_indices

from .base import ClipFrames, Scorer, decode_size, fit
from .bpp import clip_bits, packet_bits
from .flow import make_flow

STAGE = "score"
MIN_FRAMES = 3  # at least first / middle / last, however short the clip and low the sample rate
BATCH = 16  # clips handed to the scorers at once (model scorers batch their frames)


def plan_frames(row: dict, sample_fps: float) -> tuple[list[int], list[int], list[int]]:
    """(sampled frame indices, the frame after each where it lies inside the clip, which sample each follows)."""
    start, end = int(row["start_frame"]), int(row["end_frame"])
    sampled = sample_indices(start, end, fps=sample_fps, video_fps=float(row["fps"]))
    if len(sampled) < min(MIN_FRAMES, end - start):
        sampled = sample_indices(start, end, num=min(MIN_FRAMES, end - start))
    pair_of = [k for k, i in enumerate(sampled) if i + 1 < end]
    return sampled, [sampled[k] + 1 for k in pair_of], pair_of


def columns_of(scorers: list[Scorer]) -> dict[str, str]:
    return {col: kind for s in scorers for col, kind in s.columns.items()}


def empty_part(columns: dict[str, str]) -> pd.DataFrame:
    dtypes = {"float": "float64", "bool": "bool", "string": "object"}
    return pd.DataFrame({"clip_id": pd.Series(dtype="object"),
                         **{c: pd.Series(dtype=dtypes[k]) for c, k in columns.items()}})


def _score(clips: list[ClipFrames], scorers: list[Scorer]) -> list[dict]:
    rows = [{"clip_id": c.clip["clip_id"]} for c in clips]
    for scorer in scorers:
        for row, values in zip(rows, scorer.score_batch(clips)):
            row.update(values)
    return rows


def score_source(path, rows: list[dict], scorers: list[Scorer], flow=None, sample_fps: float = 2.0,
                 batch: int = BATCH) -> Output:
    """Score the clips (manifest rows) of one source in one decode: Output(rows: clip_id + score columns,
    failures: (clip_id, reason) for clips the decode cannot reach). Raises VideoError for an unreadable source."""
    columns = columns_of(scorers)
    size = decode_size(rows[0]["width"], rows[0]["height"], upscale=False)
    plans = {r["clip_id"]: plan_frames(r, sample_fps) for r in rows}
    by_id = {r["clip_id"]: r for r in rows}
    two_passes = any(s.needs_bits for s in scorers)  # a demux for the packet sizes, then the decode
    with storage.local_copy(path) if two_passes else contextlib.nullcontext(path) as src:  # a store serves it once
        bits, pixels = packet_bits(src) if two_passes else (None, 0)
        scored = _score_decoded(src, rows, plans, by_id, scorers, size, flow, bits, pixels, batch)
    done = {r["clip_id"] for r in scored}
    failures = [(r["clip_id"], f"frames {r['start_frame']}-{r['end_frame']} lie beyond the decodable frames "
                               "of the video") for r in rows if r["clip_id"] not in done]
    part = pd.DataFrame(scored, columns=["clip_id", *columns]) if scored else empty_part(columns)
    for col, kind in columns.items():
        if kind == "float":
            part[col] = part[col].astype("float64")
        elif kind == "bool":
            part[col] = part[col].astype(bool)
    return Output(rows=part, failures=failures)


def _score_decoded(src, rows, plans, by_id, scorers, size, flow, bits, pixels, batch) -> list[dict]:
    """The score rows of the clips one sequential decode of `src` reaches."""
    scored, pending = [], []
    scaled = decode_size(rows[0]["width"], rows[0]["height"])  # not `size` for a source under 256 pixels
    for cid, images in iter_many(src, {c: s + a for c, (s, a, _) in plans.items()}, size=size):
        sampled, after, pair_of = plans[cid]
        row = by_id[cid]
        decoded, images = images, fit(images, scaled)
        pending.append(ClipFrames(
            clip=row, frames=images[:len(sampled)], indices=np.asarray(sampled), after=images[len(sampled):],
            pair_of=np.asarray(pair_of, dtype=np.int64), coded_pixels=pixels, flow_fn=flow,
            detail=None if decoded is images else decoded[:len(sampled)],
            bits=None if bits is None else clip_bits(bits, row["start_frame"], row["end_frame"])))
        if len(pending) >= batch:
            scored += _score(pending, scorers)
            pending = []
    return scored + _score(pending, scorers)


@dataclass
class Loaded:
    scorers: list
    flow: object


class ScoreStage(Stage):
    """Units come from the streamed input (`index.query.clip_set_units`); `merge` writes the output from the
    input and the parts, streamed. `con`: the driver's query connection, holding the input as `input`."""

    name = STAGE
    unit_name = "clips"
    driver_only = ("con", "store", "failures", "out_dir")

    def __init__(self, con, store, scorers: list[Scorer], out_dir, sample_fps: float = 2.0,
                 flow_model: str | None = None, device: str | None = None, salt: str = "",
                 failures: list[dict] | None = None, total: int | None = None):
        self.con, self.store, self.out_dir = con, store, storage.location(out_dir)
        self.scorers, self.sample_fps, self.salt = list(scorers), float(sample_fps), salt
        self.flow_model, self.device = flow_model, device
        self.failures = list(failures or [])  # bad rows and bad sources, found by the driver
        self.uses_gpu = any(s.uses_gpu for s in self.scorers) or flow_model not in (None, "", "dis")
        self.columns = columns_of(self.scorers)
        self._total = total

    def units(self):
        return query.clip_set_units(self.con, self.store, salt=self.salt)

    def total(self) -> int | None:
        return self._total

    def load(self) -> Loaded:
        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        if threads:
            import cv2

            cv2.setNumThreads(threads)
        flow = None
        if any(s.needs_flow for s in self.scorers):
            flow = make_flow(self.flow_model, self.device)
            flow = flow.load() if hasattr(flow, "load") else flow
        return Loaded([s.load() for s in self.scorers], flow)

    def process(self, state: Loaded, unit: Unit) -> Output:
        return score_source(unit.path, unit.data, state.scorers, state.flow, self.sample_fps)

    def merge(self, store) -> tuple[int, list[dict]]:
        """Write OUT_DIR/clips.parquet (the input rows plus the score columns, streamed) and failed.jsonl;
        returns (rows written, failures)."""
        rows = write_stream(query.batches(self.con, query.join_parts(self.con, store, self.columns)),
                            self.out_dir / "clips.parquet")
        # failures of clips still without scores (a clip retried with success since is not reported); a clip
        # retried in vain fails again under its new unit's key: the same record, listed once
        fails = query.stage_failures(self.con, store)
        failures = sorted({(r["path"], r["stage"], r["reason"]): r for r in self.failures + fails}.items())
        failures = [r for _, r in failures]
        write_failed(self.out_dir, failures)
        return rows, failures
