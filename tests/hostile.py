"""The bad-input corpus: files a raw-video folder really contains, generated with PyAV (nothing binary
is committed). Used by the splitter's and video reader's tests and by the whole-pipeline fault tests.

`make_corpus(dir)` writes every case and returns {file name: Case}; `Case.expect` says what a correct
pipeline does with it: "fail" (lands in failed.jsonl with a one-line reason) or "split" (gives clips).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from index.synth import render
from index.video import write_video


@dataclass
class Case:
    name: str
    expect: str  # "split" or "fail"
    note: str
    reason: str = ""  # a word the failure reason must contain (expect == "fail")


def _frames(seconds: float = 5.0, fps: float = 25.0, size=(160, 96), cut_at: float = 2.5) -> np.ndarray:
    n = int(round(seconds * fps))
    k = int(round(cut_at * fps))
    frames, _ = render([k, n - k], ["cut"], size=size, fps=fps)
    return frames


def _encode(path, frames, pts, time_base: Fraction, container: str | None = None, codec: str = "libx264",
            sar: Fraction | None = None, rate: Fraction | None = None) -> Path:
    """Frames with explicit PTS (in `time_base` units): first PTS not 0, VFR, non-square pixels."""
    with av.open(str(path), "w", format=container) as c:
        s = c.add_stream(codec, rate=rate or Fraction(25))
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "yuv420p"
        s.time_base = time_base
        s.codec_context.time_base = time_base
        if sar is not None:
            s.codec_context.sample_aspect_ratio = sar
            s.sample_aspect_ratio = sar
        for img, p in zip(frames, pts):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts, f.time_base = int(p), time_base
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return Path(path)


# ---------------------------------------------------------------- the cases

def zero_byte(path) -> Path:
    Path(path).write_bytes(b"")
    return Path(path)


def text_as_video(path) -> Path:
    Path(path).write_text("this is not a video, only a text file with a video name\n" * 20)
    return Path(path)


def truncated(path, keep: float = 0.5, faststart: bool = False) -> Path:
    """A good mp4 cut short. Without faststart the index (moov) is at the end and is lost with it."""
    path = Path(path)
    frames = _frames()
    if faststart:
        with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            for img in frames:
                for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
    else:
        write_video(path, frames, 25)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def audio_only(path, seconds: float = 2.0) -> Path:
    rate = 44100
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=rate)
        t = np.arange(int(seconds * rate)) / rate
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        frame_size = s.codec_context.frame_size or 1024
        for i in range(0, len(tone) - frame_size, frame_size):
            f = av.AudioFrame.from_ndarray(tone[None, i:i + frame_size], format="fltp", layout="mono")
            f.sample_rate, f.pts = rate, i
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return Path(path)


def one_frame(path) -> Path:
    return write_video(path, _frames(seconds=0.04, cut_at=0.0)[:1], 25)


def first_pts_nonzero(path, start_sec: float = 3.0) -> Path:
    """Matroska keeps the first timestamp as written: the first frame is at 3 s."""
    frames = _frames()
    tb = Fraction(1, 1000)
    pts = [int(round((start_sec + i / 25) * 1000)) for i in range(len(frames))]
    return _encode(path, frames, pts, tb, container="matroska")


def rotated(path, degrees: int = 90) -> Path:
    """An mp4 whose track header carries a display matrix (a phone held upright): frames stored
    landscape, shown portrait. `degrees` is clockwise display rotation, as phones write it."""
    path = Path(path)
    write_video(path, _frames(size=(160, 96)), 25)
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    if at < 0:
        raise RuntimeError("no tkhd box")
    version = data[at + 4]
    matrix_at = at + 4 + 4 + (32 if version == 1 else 20) + 8 + 8  # after times, track id, duration...
    one, w1 = 0x10000, 0x40000000
    a, b, c, d = {90: (0, one, -one, 0), 180: (-one, 0, 0, -one), 270: (0, -one, one, 0)}[degrees % 360]
    data[matrix_at:matrix_at + 36] = struct.pack(">9i", a, b, 0, c, d, 0, 0, 0, w1)
    path.write_bytes(bytes(data))
    return path


def non_square_pixels(path, sar: Fraction = Fraction(2, 1)) -> Path:
    """Coded 160x96 with 2:1 pixels: displayed 320x96 (anamorphic)."""
    frames = _frames(size=(160, 96))
    return _encode(path, frames, range(len(frames)), Fraction(1, 25), container="mp4", sar=sar)


def variable_frame_rate(path) -> Path:
    """First half at 25 fps, second half at 10 fps (frame durations 40 ms then 100 ms), cut at 2.5 s."""
    frames = _frames(seconds=5.0, cut_at=2.5)
    n1 = 63  # frames shown at 25 fps (0 .. 2.48 s); the cut is at frame 62, inside this part
    frames = np.concatenate([frames[:n1], frames[n1::3]])
    t = [i * 40 for i in range(n1)] + [n1 * 40 + i * 100 for i in range(len(frames) - n1)]
    return _encode(path, frames, t, Fraction(1, 1000), container="matroska")


def good(path, seconds: float = 5.0) -> Path:
    return write_video(path, _frames(seconds=seconds), 25)


CASES: dict[str, tuple] = {
    "zero_byte.mp4": (zero_byte, "fail", "zero-byte file", "zero-byte"),
    "truncated.mp4": (truncated, "fail", "mp4 cut in half, index lost", "not a readable video"),
    "truncated_faststart.mp4": (lambda p: truncated(p, keep=0.6, faststart=True), "split",
                                "mp4 cut short with its index in front: the decodable part splits", ""),
    "text.mp4": (text_as_video, "fail", "a text file named .mp4", "not a readable video"),
    "audio_only.mp4": (audio_only, "fail", "an mp4 with only an audio stream", "audio only"),
    "one_frame.mp4": (one_frame, "fail", "a single-frame video", "too short"),
    "first_pts_3s.mkv": (first_pts_nonzero, "split", "first frame at 3 s", ""),
    "rotated_90.mp4": (rotated, "split", "display matrix: 90 degrees clockwise", ""),
    "anamorphic_2to1.mp4": (non_square_pixels, "split", "sample aspect ratio 2:1", ""),
    "vfr.mkv": (variable_frame_rate, "split", "25 fps then 10 fps", ""),
    "name with spaces.mp4": (good, "split", "spaces in the name", ""),
    "vidéo_日本語_ü.mp4": (good, "split", "unicode name", ""),
    "a;b $(x).mp4": (good, "split", "shell characters in the name", ""),
}


def make_corpus(out_dir, names=None) -> dict[str, Case]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = {}
    for name, (fn, expect, note, reason) in CASES.items():
        if names is None or name in names:
            fn(out_dir / name)
            cases[name] = Case(name, expect, note, reason)
    return cases
