"""`bpp`: bits per pixel of the source stream over the clip's frames: compressed bits / (frames x coded pixels).

A cheap compression-quality signal (Open-Sora 2.0 filters on it): a clip re-encoded at a starved bitrate, a
screen recording or a slideshow scores low, grainy or detailed footage high. It depends on the codec (H.264
needs about 1.5x the bits of HEVC for the same picture), so compare clips of one codec, or cut low only:
bpp < 0.02 is usually visibly blocky H.264.

The packet sizes come from one demux pass over the source (packets are read, nothing is decoded), in the
same worker as the decode; packets are put in presentation order by their timestamps, so packet k belongs
to decoded frame k.
"""

from __future__ import annotations

import math

import av
import numpy as np

from index.video import VideoError, open_container

from .base import ClipFrames, Scorer


def packet_bits(path) -> tuple[np.ndarray, int]:
    """(bits of each frame in presentation order, coded width x height) of a source's first video stream."""
    with open_container(path) as container:  # a local file or a URL, refused as every reader refuses it
        if not container.streams.video:
            raise VideoError("no video stream")
        stream = container.streams.video[0]
        pixels = int(stream.codec_context.width or 0) * int(stream.codec_context.height or 0)
        keys, sizes = [], []
        try:
            for n, packet in enumerate(container.demux(stream)):
                if packet.size <= 0:
                    continue
                t = packet.pts if packet.pts is not None else packet.dts
                keys.append((0, t, n) if t is not None else (1, n, n))  # untimed packets keep their place last
                sizes.append(packet.size)
        except av.error.FFmpegError:
            pass  # a truncated file: the packets read so far (the decode records what it cannot read)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return np.asarray(sizes, np.float64)[order] * 8.0, pixels


def clip_bits(bits: np.ndarray, start_frame: int, end_frame: int) -> tuple[float, int]:
    """(bits, frames counted) of [start_frame, end_frame) — fewer frames when the stream ends earlier."""
    part = bits[int(start_frame):int(end_frame)]
    return float(part.sum()), len(part)


class BppScorer(Scorer):
    name = "bpp"
    columns = {"bpp": "float"}
    needs_bits = True

    def score(self, clip: ClipFrames) -> dict:
        if clip.bits is None or not clip.coded_pixels:
            return {"bpp": math.nan}
        total, frames = clip.bits
        return {"bpp": total / (frames * clip.coded_pixels) if frames else math.nan}
