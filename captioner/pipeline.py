"""Caption a clips manifest: the caption stage on `index.engine`, one unit = one source video's clips not yet done.

For each source: decode the sampled frames of its clips in one pass, handing them on in chunks of a few batches
(so a long film never holds all its clips' frames), render the prompt per clip, generate in batches, check
every caption, retry the failed ones once, flag what still fails. The driver writes the unit's part (clip_id and
the caption columns); the output is the input rows joined with the caption columns of their parts.
Clips that already carry a caption by the same model and prompt are passed through untouched.
"""

from __future__ import annotations

import hashlib
import json
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import pandas as pd

from index.engine import BadInput, Output, Stage, Unit
from index.manifest import PartStore

from .backends.base import Backend, GenerateOptions, Request
from .checks import check_caption
from .frames import FramePolicy, frame_times, iter_clip_frames, load_clip_frames
from .prompts import Prompt, clip_values

IMPORTED = "imported"  # the prompt_id import-clips gives a dataset's own captions
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
        for chunk in ([frames] if frames is not None else self.chunks(video_path, todo)):
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

    def chunks(self, video_path: str, todo: list[dict]) -> Iterator[dict]:
        """{clip_id: (frames, indices)} for at most `chunk_clips` clips at a time, from one decode of the source.
        The next chunk is decoded in a thread while the model works on this one (the decoder and torch release
        the GIL), so at most two chunks' frames are held; `decode_s` counts the time spent waiting for frames."""
        clips = iter_clip_frames(video_path, todo, self.policy, self.backend.frame_size, self.backend.frame_count)

        def take() -> dict:
            return dict(itertools.islice(clips, self.chunk_clips))

        with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
            ahead = pool.submit(take)
            while True:
                t0 = time.perf_counter()
                chunk = ahead.result()
                self.backend.stats["decode_s"] += time.perf_counter() - t0
                if not chunk:
                    return
                ahead = pool.submit(take)
                yield chunk


# ---------------------------------------------------------------- the stage

def _model_captioner(build, key) -> Captioner:
    """One captioner per process (a Ray prepare task runs in a pooled worker: the processor loads once there)."""
    if key not in _CAPTIONERS:
        _CAPTIONERS[key] = build()
    return _CAPTIONERS[key]


_CAPTIONERS: dict = {}


class CaptionStage(Stage):
    """`build(load) -> Captioner` makes the captioner: with the model (`load="model"`, once per worker) or with
    the processor alone (`"processor"`: frame sizes for the Ray decode tasks). `con`: the driver's query connection
    holding the clips to caption as `input` (range-checked rows of sources that still hold their content)."""

    name = "caption"
    unit_name = "clips"
    uses_gpu = True
    driver_only = ("con", "captioner", "store", "loaded")

    def __init__(self, con, store: PartStore, captioner: Captioner, build, decode_ahead: bool = False,
                 total: int | None = None):
        self.con, self.captioner, self.build = con, captioner, build
        self.has_prepare = bool(decode_ahead)  # Ray: frames decoded in CPU tasks ahead of the model actors
        self.model_id, self.prompt_id = captioner.model_id, captioner.prompt_id
        self.decoder_key = (json.dumps(captioner.config(), sort_keys=True, default=str), captioner.chunk_clips)
        self.store, self._total = store, total

    def already(self) -> str:
        """SQL: the input rows captioned by this model and prompt already (passed through untouched)."""
        from index.query import names_of, quote

        have = set(names_of(self.con, "SELECT * FROM input")) if self.con is not None else set()
        if not {"caption", "caption_model", "prompt_id"} <= have:
            return "false"
        return (f"(caption IS NOT NULL AND caption <> '' AND caption_model = {quote(self.model_id)} "
                f"AND prompt_id = {quote(self.prompt_id)})")

    def units(self):
        from index.query import clip_set_units

        return clip_set_units(self.con, self.store, where=f"NOT {self.already()}")

    def total(self) -> int | None:
        return self._total

    def load(self) -> Captioner:
        self.loaded = self.build("model")  # in this process (--workers 1), the driver reads its timings afterwards
        return self.loaded

    def timings(self) -> dict:
        """Seconds spent decoding, preprocessing and generating, when the units ran in this process."""
        loaded = getattr(self, "loaded", None)
        return {k: v for k, v in loaded.backend.stats.items() if k.endswith("_s")} if loaded is not None else {}

    def prepare(self, unit: Unit) -> Unit:
        decoder = _model_captioner(lambda: self.build("processor"), self.decoder_key)
        if len(unit.data) > decoder.chunk_clips:  # a long source streams chunk by chunk in the actor instead
            return unit
        frames = load_clip_frames(unit.path, unit.data, decoder.policy, decoder.backend.frame_size,
                                  decoder.backend.frame_count)
        return Unit(unit.key, unit.path, (unit.data, frames), unit.weight, unit.ids)

    def process(self, captioner: Captioner, unit: Unit) -> Output:
        rows, frames = unit.data if isinstance(unit.data, tuple) else (unit.data, None)
        if frames is not None:  # arrays from Ray's object store are read-only; the processors expect their own
            frames = {cid: (arr.copy(), idx) for cid, (arr, idx) in frames.items()}
        part, unreadable = captioner.caption_unit(unit.path, rows, frames=frames)
        if part.empty:
            raise BadInput(f"{len(rows)} clips: their frames lie past the end of the video")
        cols = ["clip_id", *[c for c in CAPTION_COLUMNS if c in part.columns]]
        return Output(part[cols], [(cid, "its frames lie past the end of the video") for cid in unreadable])

    def merge(self, store: PartStore) -> str:
        """SQL of every input row captioned (now, earlier, or in the input by the same model and prompt), in input
        order: stream it with `index.query.batches`."""
        from index.query import join_parts, names_of, quote

        source = "input"
        have = set(names_of(self.con, "SELECT * FROM input"))
        if {"caption", "prompt_id"} <= have and "meta_source_caption" not in have and self.con.execute(
                f"SELECT EXISTS (SELECT 1 FROM input WHERE prompt_id = {quote(IMPORTED)})").fetchall()[0][0]:
            # an imported manifest (import-clips): the dataset's own caption stays beside the new one
            self.con.execute(f"CREATE OR REPLACE VIEW _input_sourced AS SELECT *, CASE WHEN prompt_id = "
                             f"{quote(IMPORTED)} THEN caption END AS meta_source_caption FROM input")
            source = "_input_sourced"
        return join_parts(self.con, store, CAPTION_COLUMNS, where_kept=self.already(), source=source)
