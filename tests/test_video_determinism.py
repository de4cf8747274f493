"""Same input, same clips: cutting the same ranges again, in this process or in two others, gives the same
mp4 bytes and frames, and they are the frames of a plain one-thread decode of the source, encoded.

Two causes made shard clips differ by tens of grey levels between clean runs: x264's macroblock tree on
AVX-512 CPUs encoded the same frames differently encode after encode in one process, and a frame-threaded
decode concealed a damaged source's errors differently from run to run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

import hostile
from index import synth
from index.video import cut_clips, probe, read_frames, write_video

ROOT = Path(__file__).resolve().parents[1]
CUT = """
import sys
from index.video import cut_clips
src, out, *ranges = sys.argv[1:]
ranges = [tuple(int(x) for x in r.split(":")) for r in ranges]
cut_clips(src, ranges, [f"{out}/{k}.mp4" for k in range(len(ranges))])
"""


def cut_in_a_process(src: Path, ranges, out: Path) -> list[bytes]:
    out.mkdir()
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    subprocess.run([sys.executable, "-c", CUT, str(src), str(out), *(f"{a}:{b}" for a, b in ranges)],
                   check=True, env=env, capture_output=True, timeout=300)
    return [(out / f"{k}.mp4").read_bytes() for k in range(len(ranges))]


def one_thread_frames(path: Path, stop: int) -> list[np.ndarray]:
    """The source's first frames as plain PyAV decodes them on one thread (bad packets skipped)."""
    out = []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_count = 1
        for packet in [*c.demux(stream), None]:
            try:
                out += [f.to_ndarray(format="rgb24") for f in stream.codec_context.decode(packet)]
            except av.error.FFmpegError:
                continue
    return out[:stop]


@pytest.fixture(params=["synthetic.mp4", "damaged.mp4", "cityCC0.mpg"])
def source(request, tmp_path) -> Path:
    if request.param == "synthetic.mp4":  # cuts, fades, a dissolve; an odd size
        synth.make_video(tmp_path / "synthetic.mp4", *synth.sample_layout(2, seconds=5.0), size=(176, 100))
        return tmp_path / "synthetic.mp4"
    if request.param == "damaged.mp4":
        return hostile.damaged(tmp_path / "damaged.mp4")
    return request.getfixturevalue("realdata") / "cityCC0.mpg"  # real footage, MPEG-2


def test_clips_cut_again_are_identical_in_any_process(source, tmp_path):
    ranges = [(0, 29), (30, 75), (80, 120)]
    first = cut_in_a_process(source, ranges, tmp_path / "first")
    second = cut_in_a_process(source, ranges, tmp_path / "second")
    here = [cut_clips(source, ranges) for _ in range(2)]
    assert first == second == here[0] == here[1]  # the same bytes ...
    for a, b in zip(first, second):
        n = probe(a).num_frames
        assert n and np.array_equal(read_frames(a, range(n)), read_frames(b, range(n)))
    # ... and the pixels of a one-thread decode of the source, encoded the same way
    frames = one_thread_frames(source, max(b for _, b in ranges))
    fps = probe(source).fps
    assert first == [write_video(None, np.stack(frames[a:b]), fps) for a, b in ranges]
