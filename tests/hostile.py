"""The bad-input corpus: files a raw-video folder really contains, generated with PyAV (nothing binary
is committed). Used by the splitter's and video reader's tests and by the whole-pipeline fault tests.

`make_corpus(dir)` writes every case and returns {file name: Case}; `Case.expect` says what a correct
pipeline does with it: "fail" (lands in failed.jsonl with a one-line reason) or "split" (gives clips).
"""

from __future__ import annotations

import io
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


def _tone(c, s, seconds: float, rate: int) -> None:
    """A 440 Hz tone of `seconds` through the audio stream `s` of container `c`."""
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


def audio_only(path, seconds: float = 2.0) -> Path:
    rate = 44100
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=rate)
        _tone(c, s, seconds, rate)
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


def good(path, seconds: float = 5.0, shade: int = 0) -> Path:
    """A clean 5 s mp4 with a cut at 2.5 s; `shade` brightens it by that many levels, so that several good
    files are not byte-identical copies (the encode is deterministic: the same frames give the same bytes)."""
    frames = _frames(seconds=seconds)
    if shade:
        frames = np.clip(frames.astype(np.int16) + shade, 0, 255).astype(np.uint8)
    return write_video(path, frames, 25)


def _vop_type(data: bytes) -> str:
    """The coding type of an MPEG-4 Part 2 packet's picture (VOP): I, P, B or S."""
    at = data.find(b"\0\0\1\xb6")
    return "IPBS"[data[at + 4] >> 6]


def _n_vop(time_bits: int) -> bytes:
    """A DivX placeholder picture: a P-VOP header with vop_coded = 0 (nothing to decode), byte-aligned."""
    bits = "01" + "0" + "1" + "0" * time_bits + "1" + "0"  # type, modulo time base, marker, time, marker, coded
    bits += "0" + "1" * (-(len(bits) + 1) % 8)  # stuffing
    return b"\0\0\1\xb6" + int(bits, 2).to_bytes(len(bits) // 8, "big")


def divx_packed(path, b_frames: int = 2) -> Path:
    """MPEG-4 Part 2 in AVI with DivX-style packed B-frames, as DivX 5 and XviD wrote them: each AVI chunk
    holds one frame slot, so a P-picture travels with the first B-picture shown before it and an empty
    placeholder picture takes the slot the P-picture left. The pictures come out of the decoder in order,
    but each carries the timestamp of the chunk that released it: 1, 2, 4, 3, 5, 7, 6 ..."""
    frames = _frames()
    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as c:  # plain B-frames first; FFmpeg does not write packed ones
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.codec_context.max_b_frames, s.codec_context.gop_size = b_frames, 12
        s.codec_context.bit_rate = 2_000_000  # near lossless at this size: each picture is recognisable
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    buf.seek(0)
    with av.open(buf) as c:
        coded = [bytes(p) for p in c.demux(video=0) if p.size]
        buf.seek(0)
    user = b"\0\0\1\xb2DivX503b1393p"  # the user data that tells decoders the B-frames are packed
    chunks, i = [], 0
    while i < len(coded):
        data = coded[i]
        if _vop_type(data) == "I":
            at = data.find(b"\0\0\1\xb3")  # before the group of pictures
            at = at if at >= 0 else data.find(b"\0\0\1\xb6")
            data = data[:at] + user + data[at:]
        i += 1
        if i < len(coded) and _vop_type(coded[i]) == "B":
            chunks.append(data + coded[i])  # the P-picture and the first B-picture shown before it
            i += 1
            while i < len(coded) and _vop_type(coded[i]) == "B":
                chunks.append(coded[i])
                i += 1
            chunks.append(_n_vop(time_bits=5))  # 25 fps: 5 bits of vop_time_increment
        else:
            chunks.append(data)
    with av.open(buf) as src, av.open(str(path), "w", format="avi") as out:
        st = out.add_stream_from_template(src.streams.video[0])
        for k, data in enumerate(chunks):
            pkt = av.Packet(data)
            pkt.stream, pkt.time_base, pkt.pts, pkt.dts = st, st.time_base, k, k
            pkt.is_keyframe = _vop_type(data) == "I"
            out.mux(pkt)
    return Path(path)


def damaged(path, hits: int = 12, seed: int = 0) -> Path:
    """An mp4 with bytes overwritten inside its pictures (a bad sector, a broken download): it decodes, with
    errors concealed, and a frame-threaded decode conceals them differently from run to run."""
    path = good(path)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    start = data.find(b"mdat") + 1000
    for _ in range(hits):
        at = int(rng.integers(start, len(data) - 1000))
        data[at:at + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def first_gop_damaged(path) -> Path:
    """Two-second groups of pictures, the first key picture zeroed: its group is lost, the rest decodes."""
    path = Path(path)
    frames = _frames()
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"g": "25", "keyint_min": "25", "bf": "0", "sc_threshold": "0"}
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    with av.open(str(path)) as c:
        first = next(p for p in c.demux(video=0) if p.size)
        pos, size = first.pos, first.size
    data = bytearray(path.read_bytes())
    data[pos + 4:pos + size] = bytes(size - 4)  # keep the NAL length, zero the picture
    path.write_bytes(bytes(data))
    return path


def _cover(c, width: int = 64, height: int = 64):
    """A one-picture MJPEG stream marked as an attached picture (cover art); mux `write()` once every
    stream is added."""
    pic = c.add_stream("mjpeg", rate=1)
    pic.width, pic.height, pic.pix_fmt = width, height, "yuvj420p"
    pic.disposition = av.stream.Disposition.attached_pic

    def write():
        img = av.VideoFrame.from_ndarray(np.full((height, width, 3), 200, np.uint8), format="rgb24")
        img = img.reformat(format="yuvj420p")
        img.pts = 0
        for pkt in [*pic.encode(img), *pic.encode()]:
            c.mux(pkt)
    return write


def song_with_cover(path, seconds: float = 2.0) -> Path:
    """An .mp4 holding AAC audio and its cover art (iTunes, podcasts): audio only, though it has a
    video stream."""
    rate = 44100
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=rate)
        _cover(c)()
        _tone(c, s, seconds, rate)
    return Path(path)


def still_track_first(path) -> Path:
    """Matroska whose first video track is a one-picture still (a thumbnail track) and whose second is
    the film."""
    frames = _frames()
    with av.open(str(path), "w", format="matroska") as c:
        write_cover = _cover(c)
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        write_cover()
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return Path(path)


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
    "vidéo_日本語_ü.mp4": (lambda p: good(p, shade=1), "split", "unicode name", ""),
    "a;b $(x).mp4": (lambda p: good(p, shade=2), "split", "shell characters in the name", ""),
    "divx_packed.avi": (divx_packed, "split", "MPEG-4 Part 2, packed B-frames: timestamps out of order", ""),
    "damaged.mp4": (damaged, "split", "bytes overwritten inside pictures: errors concealed", ""),
    "first_gop_damaged.mp4": (first_gop_damaged, "split", "the first key picture lost: the rest decodes", ""),
    "song_with_cover.mp4": (song_with_cover, "fail", "audio and cover art: no video to split", "audio only"),
    "still_track_first.mkv": (still_track_first, "split", "a one-picture track before the film", ""),
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
