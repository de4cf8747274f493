"""Presentation times of decoded frames: packed B-frames, missing, repeated and reset timestamps."""

from fractions import Fraction

import av
import numpy as np
import pytest

import hostile
from index.video import _in_order, iter_frames, probe


def test_packed_b_frames_give_each_frame_its_own_time(tmp_path):
    path = hostile.divx_packed(tmp_path / "packed.avi")
    with av.open(str(path)) as c:
        raw = [f.pts for f in c.decode(video=0)]
    assert raw != sorted(raw)  # the file does reproduce timestamps out of order ...
    assert sorted(raw) == list(range(raw[0], raw[0] + len(raw)))  # ... one per 40 ms slot
    frames = list(iter_frames(path))
    assert [f.pts_sec for f in frames] == [round(i / 25, 6) for i in range(125)]
    # the pictures come in display order: frame i is nearest source frame i, not a neighbour
    src = hostile._frames().astype(np.int16)
    for f in frames:
        err = [np.abs(f.image.astype(np.int16) - src[j]).mean() if 0 <= j < len(src) else np.inf
               for j in (f.index - 1, f.index, f.index + 1)]
        assert int(np.argmin(err)) == 1, f.index
    assert probe(path).fps == 25.0


@pytest.mark.parametrize("stamps,want", [
    ([0, 1, 2, 3], [0, 1, 2, 3]),
    ([1, 3, 2, 5, 4, 6], [0, 1, 2, 3, 4, 5]),  # packed B-frames: one behind, one ahead
    ([1, 2, 4, 3, 5, 7, 6, 8], [0, 1, 2, 3, 4, 5, 6, 7]),
    ([0, None, 2, 3], [0, 1, 2, 3]),  # no timestamp: one period after the previous frame
    ([None, None, 5, 6], [0, 1, 2, 3]),  # the first timestamps missing: times continue from the counted ones
    ([0, 1, 1, 3], [0, 1, 2, 3]),  # a repeat
    ([100, 101, 102, 0, 1], [0, 1, 2, 3, 4]),  # a reset: times go on from the frame before it
    ([100, 101, 102, 0, 2, 1, 5], [0, 1, 2, 3, 4, 5, 8]),  # ... with their own steps after it
    ([0, 1, 10, 11], [0, 1, 10, 11]),  # a gap is real: kept
    ([], []),
])
def test_times_follow_presentation_order(stamps, want):
    items = list(range(len(stamps)))
    got = list(_in_order(items, lambda i: stamps[i], Fraction(1, 25), 25.0))
    assert [i for i, _ in got] == items  # every frame, in the order decoded
    assert [t for _, t in got] == [round(k / 25, 6) for k in want]


def test_vfr_and_a_late_first_frame_keep_their_timestamps(tmp_path):
    path = hostile.variable_frame_rate(tmp_path / "vfr.mkv")
    times = np.array([f.pts_sec for f in iter_frames(path)])
    assert set(np.round(np.diff(times[:63]), 3)) == {0.04} and set(np.round(np.diff(times[63:]), 3)) == {0.1}
