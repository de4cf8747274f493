"""Caption a clips manifest: one unit = one source video's clips, resumable with `index.manifest.PartStore`.

For each source: decode the sampled frames of its clips in one pass, handing them on in chunks of a few batches
(so a long film never holds all its clips' frames), render the prompt per clip, generate in batches, check
every caption, retry the failed ones once, flag what still fails, write the unit's part.
Clips that already carry a caption by the same model and prompt are passed through untouched.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Iterator

import pandas as pd

from index.engine import EngineOptions, run_units
from index.manifest import PartStore
from index.video import VideoError

from .backends.base import Backend, GenerateOptions, Request
from .checks import check_caption
from .frames import FramePolicy, frame_times, iter_clip_frames, load_clip_frames
from .prompts import Prompt, clip_values

CAPTION_COLUMNS = ("caption", "caption_model", "prompt_id", "caption_tokens", "caption_flags", "caption_retries",
                   "frame_times")


@dataclass
class Summary:
    clips: int = 0
    captioned: int = 0  # captions written in this run
    skipped: int = 0  # already captioned (earlier run, or same model and prompt in the input)
    flagged: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0


def stage_name(model_id: str, prompt_id: str) -> str:
    return "caption-" + hashlib.sha1(f"{model_id}\n{prompt_id}".encode()).hexdigest()[:12]


def unit_key(video_path: str, video_sha256: str) -> str:
    return hashlib.sha1(f"{video_sha256}\n{video_path}".encode()).hexdigest()[:24]


def _already(row: dict, model_id: str, prompt_id: str) -> bool:
    cap = row.get("caption")
    return (isinstance(cap, str) and bool(cap) and row.get("caption_model") == model_id
            and row.get("prompt_id") == prompt_id)


def decode_unit(captioner: "Captioner", unit: tuple) -> tuple:
    """The CPU half of a unit, run as a Ray task ahead of the model actors: (unit, frames or failure reason).
    `captioner` needs the backend's processor only (`frame_size`, `frame_count`), not the model. A source with
    more clips than one chunk is left to the actor (frames None), which streams it chunk by chunk."""
    _, path, rows = unit
    todo = captioner.todo(rows)
    if len(todo) > captioner.chunk_clips:
        return unit, None
    try:
        return unit, load_clip_frames(path, todo, captioner.policy, captioner.backend.frame_size,
                                      captioner.backend.frame_count)
    except VideoError as e:
        return unit, str(e)


def caption_one(captioner: "Captioner", item: tuple) -> tuple:
    """A Ray actor's unit: ('ok', (part, unreadable), backend stats spent) or ('fail', one-line reason, {}).
    `item` is a unit, or `decode_unit`'s (unit, frames) when decoding runs in separate tasks."""
    unit, frames = (item, None) if len(item) == 3 else item
    if isinstance(frames, str):
        return "fail", frames, {}
    if frames is not None:  # arrays from Ray's object store are read-only; the processors expect their own
        frames = {cid: (arr.copy(), idx) for cid, (arr, idx) in frames.items()}
    before = dict(captioner.backend.stats)
    try:
        result = captioner.caption_unit(unit[1], unit[2], frames=frames)
    except VideoError as e:
        return "fail", str(e), {}
    return "ok", result, {k: v - before.get(k, 0.0) for k, v in captioner.backend.stats.items()}


class Captioner:
    """Holds the backend and options; `run(df, out_dir)` captions a manifest resumably."""

    def __init__(self, backend: Backend, prompt: Prompt, policy: FramePolicy | None = None,
                 max_new_tokens: int = 256, two_pass=None, chunk_clips: int | None = None):
        self.backend = backend
        # clips whose frames are held at once: a long film streams through in chunks of whole batches
        self.chunk_clips = int(chunk_clips or 4 * backend.batch_size)
        self.prompt = prompt
        self.policy = policy or FramePolicy()
        self.max_new_tokens = int(max_new_tokens)
        self.two_pass = two_pass  # a captioner.twopass.TwoPass, or None
        # provenance recorded on every caption: in two-pass mode the text comes from the frame and summary
        # prompts (not `prompt`), and from the summary model too when that is another model
        self.model_id, self.prompt_id = backend.spec.model_id, prompt.prompt_id
        if two_pass is not None:
            summarizer = two_pass.summarizer.spec.model_id
            self.model_id += f"+{summarizer}" if summarizer != self.model_id else ""
            self.prompt_id = f"{two_pass.frame_prompt.prompt_id}+{two_pass.summary_prompt.prompt_id}"

    def config(self) -> dict:
        return {"model": self.model_id, "prompt_id": self.prompt_id,
                "prompt_sha1": hashlib.sha1(self.prompt.template.encode()).hexdigest()[:12],
                "num_frames": self.policy.num_frames, "sample_fps": self.policy.sample_fps,
                "max_frames": self.policy.max_frames, "max_new_tokens": self.max_new_tokens,
                "max_pixels": self.backend.max_pixels, "two_pass": self.two_pass.describe() if self.two_pass else None}

    # ------------------------------------------------------------ one unit
    def requests(self, rows: list[dict], frames: dict) -> list[Request]:
        reqs = []
        for row in rows:
            arr, idx = frames[row["clip_id"]]
            start = int(row["start_frame"])
            reqs.append(Request(row["clip_id"], self.prompt.render(**clip_values(row, len(idx))), arr,
                                frame_indices=[i - start for i in idx], fps=float(row["fps"]),
                                clip_frames=int(row["num_frames"])))
        return reqs

    def caption_requests(self, reqs: list[Request]) -> dict[str, dict]:
        """{clip_id: {caption, caption_tokens, caption_flags, caption_retries}} with one retry of failures."""
        gen = self.two_pass.generate if self.two_pass else self.backend.generate
        outs = gen(reqs, GenerateOptions(self.max_new_tokens))
        result, retry = {}, []
        for r in reqs:
            o = outs[r.request_id]
            text, flags = check_caption(o.text, o.hit_limit)
            result[r.request_id] = dict(caption=text, caption_tokens=o.num_tokens,
                                        caption_flags=",".join(flags), caption_retries=0)
            if flags:
                retry.append(r)
        if retry:
            outs = gen(retry, GenerateOptions(self.max_new_tokens, retry=True))
            for r in retry:
                o = outs[r.request_id]
                text, flags = check_caption(o.text, o.hit_limit)
                prev = result[r.request_id]
                tokens = o.num_tokens
                if not text and prev["caption"]:  # an empty retry: keep the first attempt and its flags
                    text, flags, tokens = prev["caption"], prev["caption_flags"].split(","), prev["caption_tokens"]
                result[r.request_id] = dict(caption=text, caption_tokens=tokens,
                                            caption_flags=",".join(flags), caption_retries=1)
        return result

    def todo(self, rows: list[dict]) -> list[dict]:
        """The rows a unit sends to the model: not captioned by this model and prompt yet, a non-empty range."""
        return [r for r in rows if not _already(r, self.model_id, self.prompt_id)
                and int(r["end_frame"]) > int(r["start_frame"])]

    def caption_unit(self, video_path: str, rows: list[dict],
                     frames: dict | None = None) -> tuple[pd.DataFrame, list[str]]:
        """Captions for one source's rows, and the ids of clips whose frames could not be read.
        `frames`: from `decode_unit` when the frames were decoded elsewhere (a Ray task)."""
        todo = [r for r in rows if not _already(r, self.model_id, self.prompt_id)]
        empty = {r["clip_id"] for r in todo if int(r["end_frame"]) <= int(r["start_frame"])}
        todo = [r for r in todo if r["clip_id"] not in empty]
        captions, times = {}, {}
        for chunk in ([frames] if frames is not None else self._chunks(video_path, todo)):
            rows_in = [r for r in todo if r["clip_id"] in chunk]  # the manifest's order, whatever the decode's
            if rows_in:
                captions.update(self.caption_requests(self.requests(rows_in, chunk)))
            times.update({r["clip_id"]: frame_times(r, chunk[r["clip_id"]][1]) for r in rows_in})
        unreadable = [r["clip_id"] for r in todo if r["clip_id"] not in times]
        out = []
        for row in rows:
            row = dict(row)
            if row["clip_id"] in unreadable:  # recorded in failed.jsonl by the caller, not kept
                continue
            if row["clip_id"] in captions:
                row.update(captions[row["clip_id"]], caption_model=self.model_id, prompt_id=self.prompt_id,
                           frame_times=times[row["clip_id"]])
            elif row["clip_id"] in empty:  # nothing to show the model: recorded, never captioned
                row.update(caption=None, caption_model=self.model_id, prompt_id=self.prompt_id,
                           caption_tokens=0, caption_flags="no_frames", caption_retries=0, frame_times=[])
            out.append(row)
        return pd.DataFrame(out), unreadable

    def _chunks(self, video_path: str, todo: list[dict]) -> Iterator[dict]:
        """{clip_id: (frames, indices)} for at most `chunk_clips` clips at a time, from one decode of the source."""
        clips = iter_clip_frames(video_path, todo, self.policy, self.backend.frame_size, self.backend.frame_count)
        while True:
            t0 = time.perf_counter()
            chunk = dict(itertools.islice(clips, self.chunk_clips))
            self.backend.stats["decode_s"] += time.perf_counter() - t0
            if not chunk:
                return
            yield chunk

    # ------------------------------------------------------------ a manifest
    def run(self, df: pd.DataFrame, out_dir, progress=None, engine: EngineOptions | None = None,
            make_worker=None, prepare=None, retry_failed: bool = False) -> tuple[pd.DataFrame, list[dict], Summary]:
        """Caption every unit not done yet. With `engine.engine == "ray"`, `make_worker()` (picklable) builds
        the captioner in each Ray actor (`caption_one` runs there), `prepare` (`decode_unit`) decodes frames in
        separate CPU tasks, and the parts are written here as locally."""
        store = PartStore(out_dir, stage_name(self.model_id, self.prompt_id), self.config(), retry_failed)
        summary = Summary(clips=len(df))
        t_start = time.perf_counter()
        tokens_before = self.backend.stats["output_tokens"]
        remote = engine is not None and engine.engine == "ray"
        units, current = [], set()
        for (path, sha), group in df.groupby(["video_path", "video_sha256"], sort=True, dropna=False):
            key = unit_key(path, sha)
            current.add(key)
            rows = group.sort_values("start_frame").to_dict("records")
            if store.done(key):
                summary.skipped += len(rows)
            elif remote:
                units.append((key, path, rows))
                continue
            else:
                try:
                    result = self.caption_unit(path, rows)
                except VideoError as e:
                    store.fail(key, path, str(e))
                else:
                    self._write(store, key, path, rows, *result, summary)
            if progress is not None:
                progress(len(rows))

        def on_result(unit, result) -> None:
            key, path, rows = unit
            if result[0] == "ok":
                self._write(store, key, path, rows, *result[1], summary)
                for k, v in result[2].items():
                    self.backend.stats[k] += v
            else:
                store.fail(key, path, result[1])
            if progress is not None:
                progress(len(rows))

        if units:
            run_units(units, make_worker, on_result, prepare=prepare, options=engine,
                      on_error=lambda unit, reason: on_result(unit, ("fail", reason)))
        # parts and failures of sources no longer in the input (or since changed) stay on disk, not in the output
        merged, failures = store.merge(keys=current)
        if len(merged):
            merged = merged[merged["clip_id"].isin(set(df["clip_id"]))].reset_index(drop=True)
        if "caption_flags" in merged.columns:
            summary.flagged = int((merged["caption_flags"].fillna("") != "").sum())
        summary.output_tokens = int(self.backend.stats["output_tokens"] - tokens_before)
        summary.seconds = time.perf_counter() - t_start
        summary.timings = {k: round(v, 3) for k, v in self.backend.stats.items() if k.endswith("_s")}
        return merged, failures, summary

    def _write(self, store: PartStore, key: str, path: str, rows: list[dict], part: pd.DataFrame,
               unreadable: list[str], summary: Summary) -> None:
        for cid in unreadable:
            store.fail(f"{key}-{cid}", path, f"clip {cid}: its frames lie past the end of the video")
        fresh = part.get("clip_id", pd.Series(dtype=str)).isin(
            [r["clip_id"] for r in rows if not _already(r, self.model_id, self.prompt_id)])
        summary.captioned += int(fresh.sum())
        summary.skipped += int((~fresh).sum())
        store.write(key, part)
