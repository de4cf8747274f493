"""Video probing, frame reading and frame-accurate clip writing. PyAV is the reference decoder.

Frame indices are positions in PyAV's decoded (presentation-order) frame sequence; times are PTS-based
seconds from the first decoded frame (see `_in_order`). Every reader makes one sequential pass over a
source: one decode serves all the clips of a video, never one seek per clip.

Same input, same frames: each source is decoded on one thread (see `_decoded`) and clips are encoded by
one x264 thread, so cutting the same clips again, in this process or another, gives the same frames and
the same mp4 bytes (with the same PyAV and FFmpeg builds).
"""

from __future__ import annotations

import contextlib
import heapq
import io
import math
import os
import stat
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator, Sequence, TypeVar

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .engine import BadInput
from .files import temp_name

Source = "str | os.PathLike | bytes | io.IOBase"
T = TypeVar("T")
REORDER = 4  # frames of look-ahead when putting timestamps in presentation order (see `_in_order`)


class VideoError(BadInput):
    """A source that cannot be used, with a one-line reason (recorded in failed.jsonl)."""


@dataclass
class VideoInfo:
    path: str
    container: str
    codec: str
    width: int  # display width (after rotation and sample aspect ratio)
    height: int
    coded_width: int
    coded_height: int
    sar: float
    rotation: int  # degrees counter-clockwise applied for display
    fps: float  # average, from PTS (frames / duration when the container knows both)
    duration: float  # seconds
    num_frames: int  # container's count, 0 when unknown (decode to know exactly)
    start_sec: float  # PTS of the first frame in the container's timeline
    has_audio: bool


@dataclass
class Frame:
    index: int
    pts_sec: float  # from the first decoded frame
    image: np.ndarray  # H x W x 3 uint8 RGB, as displayed


@contextlib.contextmanager
def _open(src):
    """The source as an open PyAV container: a local file (refused when it is not a regular, non-empty file), a
    URL (read through `index.storage.open_read`: range reads ahead, one sequential pass), bytes or a file object."""
    from . import storage

    fileobj = None
    if isinstance(src, (bytes, bytearray, memoryview)):
        src = io.BytesIO(bytes(src))
    elif storage.is_remote(src):
        fileobj = storage.open_read(src)
        if getattr(fileobj, "size", None) == 0:
            fileobj.close()
            raise VideoError("zero-byte file")
        src = fileobj
    elif isinstance(src, (str, os.PathLike)):
        p = Path(src)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise VideoError("file not found") from None
        except OSError as e:
            raise VideoError(f"cannot read file ({e.strerror or e})") from None
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block, a device never end
            raise VideoError("not a regular file (a pipe, device or folder)")
        if st.st_size == 0:
            raise VideoError("zero-byte file")
        src = str(p)
    try:
        try:
            container = av.open(src, "r")
        except av.error.FFmpegError as e:
            raise VideoError(f"not a readable video ({_short(e)})") from None
        with container:
            yield container
    finally:
        if fileobj is not None:
            fileobj.close()


open_container = _open  # for a reader that needs the container itself (packets without a decode: bits per pixel)


def _short(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return " ".join(str(msg).split())[:160]


def _video_stream(container):
    """The film: FFmpeg's best video stream, never cover art (a picture attached to a song or a film)."""
    moving = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not moving:
        cover = " (only cover art)" if container.streams.video else ""
        if container.streams.audio:
            raise VideoError(f"audio only, no video stream{cover}")
        raise VideoError(f"no video stream{cover}")
    best = container.streams.best("video")  # prefers a stream of many frames over a one-picture track
    stream = best if best in moving else moving[0]
    if stream.codec_context is None or not stream.codec_context.name:
        raise VideoError("video stream has no decoder")
    return stream


def _rotation(stream, frame=None) -> int:
    """Display rotation in degrees (0, 90, 180, 270), from the display matrix or the legacy tag.

    PyAV >= 14 exposes the display matrix on decoded frames (`frame.rotation`), not on the stream.
    """
    rot = 0
    if frame is not None and getattr(frame, "rotation", None):
        return int(round(float(frame.rotation))) % 360
    try:
        side = stream.side_data
        if hasattr(side, "get"):
            for k in ("DISPLAYMATRIX", "displaymatrix"):
                v = side.get(k)
                if v is not None:
                    rot = int(round(float(v)))
    except Exception:
        pass
    if not rot:
        tag = stream.metadata.get("rotate") if stream.metadata else None
        if tag:
            rot = -int(float(tag))  # legacy tag is clockwise
    return int(rot) % 360


def _display_size(w: int, h: int, sar: Fraction | None, rotation: int) -> tuple[int, int]:
    if sar and sar.numerator > 0 and sar != 1:
        w = int(round(w * sar.numerator / sar.denominator))
    w += w % 2  # keep even so clips encode as yuv420p
    if rotation in (90, 270):
        w, h = h, w
    return int(w), int(h)


def probe(src) -> VideoInfo:
    """Read container metadata and decode one frame to prove the stream is decodable."""
    with _open(src) as c:
        stream = _video_stream(c)
        cc = stream.codec_context
        sar = stream.sample_aspect_ratio
        rot = _rotation(stream)
        tb = stream.time_base or Fraction(1, 1)
        duration = float(stream.duration * tb) if stream.duration else (c.duration or 0) / av.time_base
        n = int(stream.frames or 0)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if n and duration > 0:
            fps = n / duration
        first = next(_decoded(c, stream), None)  # as every reader sees it: a lost first group is skipped
        if first is None:
            raise VideoError("no decodable video frames")
        start = float(first.pts * tb) if first.pts is not None else 0.0
        rot = _rotation(stream, first)
        w, h = _display_size(cc.width or first.width, cc.height or first.height, sar, rot)
        return VideoInfo(
            path=str(src) if not isinstance(src, (bytes, bytearray, memoryview, io.IOBase)) else "<bytes>",
            container=c.format.name, codec=cc.name, width=w, height=h,
            coded_width=first.width, coded_height=first.height,
            sar=float(sar) if sar else 1.0, rotation=rot, fps=round(fps, 6), duration=duration,
            num_frames=n, start_sec=start, has_audio=bool(c.streams.audio),
        )


def _decoded(container, stream) -> Iterator["av.VideoFrame"]:
    """The stream's frames, in presentation order, from one sequential pass on one decoder thread.

    One thread because a damaged stream's frames depend on the threads: frame threads conceal its errors
    differently from run to run (whole frames differed, so clip pixels and shot boundaries did) and drop a
    different number of frames at a truncated end; with slice threads H.264 conceals errors otherwise
    than with one thread, so a worker limited to one CPU (FFmpeg's automatic count is then 1) decoded
    other frames than the rest. Clean streams decode the same either way; parallelism comes from
    decoding several sources at once (`--workers`).

    A packet that cannot be decoded is skipped (the frames around it still come out); an unreadable tail
    ends the pass with what the decoder still holds; a stream whose first packets all fail raises
    VideoError.
    """
    stream.codec_context.thread_count = 1
    packets = container.demux(stream)
    got = errors = 0
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as e:
            if not got:
                raise VideoError(f"undecodable frames ({_short(e)})") from None
            packet = None  # truncated: drain the decoder, then stop
        try:
            frames = stream.codec_context.decode(packet) if packet is None else packet.decode()
        except av.error.FFmpegError as e:
            errors += 1
            if not got and errors > 8:
                raise VideoError(f"undecodable frames ({_short(e)})") from None
            frames = []
        for frame in frames:
            got += 1
            yield frame
        if packet is None:
            return


def _in_order(items: Iterable[T], stamp: Callable[[T], int | None], time_base: Fraction,
              rate: float) -> Iterator[tuple[T, float]]:
    """(item, seconds from the first) for decoded frames, with times that increase.

    A frame's timestamp is its PTS (the packet's DTS where it has none). Decoders hand frames out in
    presentation order, so the timestamps of the next `REORDER` frames are sorted and the smallest goes to
    the frame handed out: this gives back the true times where timestamps ride on the wrong frames, as in
    AVI files with DivX/XviD packed B-frames (pictures in order, timestamps 1, 2, 4, 3, 5, 7, 6 ...).
    A frame without a timestamp, or whose time would not increase (a repeat), comes one frame period
    (1 / `rate`) after the previous one; after a jump back of more than `REORDER` periods (a reset, as in
    concatenated transport streams) times go on from there. A jump forward is kept: it is a real gap.
    """
    step = 1.0 / rate if rate and rate > 0 else 0.04
    pending: deque = deque()
    stamps: list[int] = []  # heap of the pending frames' timestamps
    offset, last = None, None

    def release():
        nonlocal offset, last
        item, ts = pending.popleft()
        t = None
        if ts is not None:
            ts = heapq.heappop(stamps)
            if offset is None:  # the first timestamp: times count from it (or continue the counted ones)
                offset = (0.0 if last is None else last + step) - float(ts * time_base)
            t = float(ts * time_base) + offset
        if t is None or (last is not None and t <= last + 1e-9):
            t = 0.0 if last is None else last + step
        last = t
        return item, round(t, 6)

    top = None  # the largest timestamp so far
    for item in items:
        ts = stamp(item)
        if ts is not None and top is not None and float((top - ts) * time_base) > REORDER * step:
            while pending:  # a reset, not a reordering: it must not be sorted in among the frames before it
                yield release()
            offset, top = None, None  # times go on from the last frame's
        if ts is not None:
            heapq.heappush(stamps, ts)
            top = ts if top is None else max(top, ts)
        pending.append((item, ts))
        if len(pending) > REORDER:
            yield release()
    while pending:
        yield release()


def iter_frames(src, size: tuple[int, int] | None = None, stop: int | None = None,
                want: Collection[int] | None = None) -> Iterator[Frame]:
    """Decode frames in order, as displayed. `size=(w, h)` resizes inside the decoder (swscale).
    With `want`, only those frame indices are converted to RGB and yielded (the rest are decoded only).

    Corrupt packets in the middle of a file are skipped (the frames around them still come out);
    a file whose first packets cannot be decoded raises VideoError.
    """
    with _open(src) as c:
        stream = _video_stream(c)
        rot = None  # from the first decoded frame (where PyAV puts the display matrix)
        cc = stream.codec_context
        rate = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 25)
        reformatter = VideoReformatter()  # one scaler for the whole pass (frame.reformat makes one per frame)
        stamp = lambda f: f.pts if f.pts is not None else f.dts  # noqa: E731
        timed = _in_order(_decoded(c, stream), stamp, stream.time_base or Fraction(1, 1), rate)
        if stop is not None and stop <= 0:
            return
        for index, (frame, pts_sec) in enumerate(timed):
            if want is None or index in want:
                if rot is None:
                    rot = _rotation(stream, frame)
                    disp = _display_size(cc.width or frame.width, cc.height or frame.height,
                                         stream.sample_aspect_ratio, rot)
                    out_w, out_h = size or disp
                    # size before rotation: rotate after resizing
                    pre_w, pre_h = (out_h, out_w) if rot in (90, 270) else (out_w, out_h)
                img = reformatter.reformat(frame, width=pre_w, height=pre_h, format="rgb24").to_ndarray()
                if rot:
                    img = np.ascontiguousarray(np.rot90(img, k=rot // 90))
                yield Frame(index, pts_sec, img)
            if stop is not None and index + 1 >= stop:
                return


def iter_many(src, requests: dict, size: tuple[int, int] | None = None) -> Iterator[tuple]:
    """One sequential decode serving many clips: {key: [frame indices]} -> (key, (T, H, W, 3) uint8) pairs,
    each yielded as soon as the decode has passed its last frame, so a caller can use the first clips while
    the decode goes on and holds only the clips in flight. A request for frames past the end of the video
    is never yielded; an empty request is yielded first, as an empty array."""
    wanted: dict[int, list[tuple]] = {}
    for key, idxs in requests.items():
        if not len(idxs):
            yield key, np.zeros((0, 0, 0, 3), np.uint8)
        for pos, i in enumerate(idxs):
            wanted.setdefault(int(i), []).append((key, pos))
    if not wanted:
        return
    out = {k: [None] * len(v) for k, v in requests.items() if len(v)}
    left = {k: len(v) for k, v in out.items()}
    for fr in iter_frames(src, size=size, stop=max(wanted) + 1, want=wanted):
        for key, pos in wanted[fr.index]:
            out[key][pos] = fr.image
            left[key] -= 1
            if not left[key]:
                yield key, np.stack(out.pop(key))


def read_many(src, requests: dict, size: tuple[int, int] | None = None, drop_missing: bool = False) -> dict:
    """`iter_many` gathered: {key: [frame indices]} -> {key: (T, H, W, 3) uint8}.

    A request for frames past the end of the video raises VideoError, or with `drop_missing` is left out
    of the result (the other clips of the source are still served)."""
    got = dict(iter_many(src, requests, size=size))
    if len(got) < len(requests) and not drop_missing:
        last = max(max(int(i) for i in v) for k, v in requests.items() if k not in got)
        raise VideoError(f"frame {last} requested but the video ends before it")
    return got


def read_frames(src, indices: Sequence[int], size: tuple[int, int] | None = None) -> np.ndarray:
    """The frames at the given decoded-frame indices, one sequential pass: (T, H, W, 3) uint8."""
    return read_many(src, {0: list(indices)}, size=size)[0]


def sample_indices(start_frame: int, end_frame: int, num: int | None = None, fps: float | None = None,
                   video_fps: float | None = None) -> list[int]:
    """Uniform sampling inside [start_frame, end_frame): `num` frames at segment centres, or a fixed `fps`."""
    length = int(end_frame) - int(start_frame)
    if length <= 0:
        return []
    if fps:
        if not video_fps:
            raise ValueError("sampling at a fixed fps needs the video's fps")
        step = max(float(video_fps) / float(fps), 1.0)
        count = max(1, int(math.floor(length / step)))
        return [int(start_frame + min(length - 1, math.floor((k + 0.5) * step))) for k in range(count)]
    num = int(num or 8)
    return [int(start_frame + min(length - 1, math.floor((k + 0.5) * length / num))) for k in range(num)]


# ---------------------------------------------------------------- writing

def _even(x: int) -> int:
    return max(2, x - x % 2)


class _ClipEncoder:
    """Encodes RGB frames to an H.264 (or MPEG-4 Part 2) mp4, constant frame rate, frame-accurate."""

    def __init__(self, dst, fps: float, width: int, height: int, crf: int = 18):
        self.buffer = io.BytesIO() if dst is None else None
        self.dst = None if dst is None else Path(dst)
        # a name of its own: two copies of one video cut by two workers write the same clip path
        self.tmp = None if dst is None else temp_name(self.dst)
        self.container = av.open(self.buffer if dst is None else str(self.tmp), "w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = _even(width), _even(height)
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.thread_count = 1  # threaded x264 output differs run to run
        if codec == "libx264":
            # mbtree off: with it, x264's AVX-512 code gave other bytes (frames up to ~30 grey levels apart) for
            # the same frames, encode after encode in one process; without it every CPU path gives the same
            self.stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0"}
        self.count = 0

    def add(self, image: np.ndarray) -> None:
        h, w = self.stream.height, self.stream.width
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:h, :w]), format="rgb24")
        frame.pts = self.count
        self.count += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> bytes | None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        if self.tmp is not None:
            os.replace(self.tmp, self.dst)  # a clip file is complete or absent
            return None
        return self.buffer.getvalue()


def write_video(path, frames: Iterable[np.ndarray] | np.ndarray, fps: float) -> Path | bytes:
    """Write RGB uint8 frames (T, H, W, 3) to an mp4; `path=None` returns the bytes."""
    enc = None
    for img in frames:
        if enc is None:
            enc = _ClipEncoder(path, fps, img.shape[1], img.shape[0])
        enc.add(img)
    if enc is None:
        raise VideoError("no frames to write")
    data = enc.close()
    return data if path is None else Path(path)


def clip_rate(num_frames: int, start_sec: float, end_sec: float, fps: float) -> float:
    """The rate a cut clip is encoded at: the source's `fps`, or, for a range of a variable-frame-rate file
    whose own average differs by more than 0.5 %, that average, so the clip lasts as long as its range."""
    own = num_frames / (end_sec - start_sec) if end_sec > start_sec else 0.0
    return own if own > 0 and (fps <= 0 or abs(own - fps) > 0.005 * fps) else fps


def cut_clips(src, ranges: Sequence[tuple[int, int]], dst_paths: Sequence | None = None,
              fps: float | Sequence[float] | None = None, size: tuple[int, int] | None = None) -> list:
    """Re-encode each [start_frame, end_frame) range as its own mp4 in one sequential decode, at `fps`
    (one rate, or one per range: see `clip_rate`).

    Returns the paths (or the mp4 bytes when `dst_paths` is None), in the order of `ranges`.
    """
    from . import storage

    ranges = [(int(a), int(b)) for a, b in ranges]
    if not ranges:
        return []
    remote = [d is not None and storage.is_remote(d) for d in (dst_paths or [None] * len(ranges))]
    if fps is None:
        fps = probe(src).fps if not isinstance(src, io.IOBase) else 25.0
    rates = [float(r) for r in fps] if isinstance(fps, (list, tuple, np.ndarray)) else [float(fps)] * len(ranges)
    targets = list(dst_paths) if dst_paths is not None else [None] * len(ranges)
    dsts = [None if r else d for d, r in zip(targets, remote)]  # a clip for a store is encoded in memory
    encoders: dict[int, _ClipEncoder] = {}
    results: list = [None] * len(ranges)
    last = max(b for _, b in ranges)
    for fr in iter_frames(src, size=size, stop=last):
        for k, (a, b) in enumerate(ranges):
            if a <= fr.index < b:
                if k not in encoders:
                    encoders[k] = _ClipEncoder(dsts[k], rates[k], fr.image.shape[1], fr.image.shape[0])
                encoders[k].add(fr.image)
                if fr.index == b - 1:
                    data = encoders[k].close()
                    if remote[k]:
                        results[k] = storage.write_bytes(targets[k], data)  # one PUT: complete or absent
                    else:
                        results[k] = data if dsts[k] is None else Path(dsts[k])
    missing = [ranges[k] for k in range(len(ranges)) if results[k] is None]
    for k in encoders:
        if results[k] is None:  # the source ended inside this range: drop the partial clip
            encoders[k].container.close()
            if encoders[k].tmp is not None:
                encoders[k].tmp.unlink(missing_ok=True)
    if missing:
        raise VideoError(f"clip range {missing[0]} lies beyond the decodable frames")
    return results
