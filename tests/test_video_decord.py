"""Is decord safe as a faster frame reader? The finding this records: not in general.

decord returns PyAV's frames on H.264 mp4, sequentially and after seeks, but on MPEG-2 (AVI, and the
MPEG-PS real clip even sequentially) it returns other frames. So `index.video` keeps PyAV as its only
reader. If the `differs` tests start failing, decord was fixed: re-check before adding a backend.
"""

import av
import numpy as np
import pytest

from index import synth
from index.video import read_frames, write_video

decord = pytest.importorskip("decord")

SEEKS = [37, 5, 90, 13, 64, 64, 2, 110]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("decord")
    frames, _ = synth.render([40, 40, 40], ["cut", "cut"], size=(160, 96))
    write_video(d / "h264.mp4", frames, 25)
    with av.open(str(d / "mpeg2.avi"), "w") as c:
        s = c.add_stream("mpeg2video", rate=25)
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        s.options = {"g": "12", "bf": "2", "qscale": "2"}  # GOPs with B-frames, as broadcast MPEG-2
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return d


def _decord(path, indices, seek: bool) -> np.ndarray:
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
    if seek:
        return np.stack([vr[i].asnumpy() for i in indices])
    return vr.get_batch(list(indices)).asnumpy()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def test_decord_matches_pyav_on_h264_mp4(videos):
    ref = read_frames(videos / "h264.mp4", range(120))
    assert _same(_decord(videos / "h264.mp4", range(120), seek=False), ref)
    assert _same(_decord(videos / "h264.mp4", SEEKS, seek=True), ref[SEEKS])


def test_decord_differs_after_seeks_on_mpeg2_avi(videos):
    ref = read_frames(videos / "mpeg2.avi", range(120))
    assert _same(_decord(videos / "mpeg2.avi", range(120), seek=False), ref)  # sequential: same
    assert not _same(_decord(videos / "mpeg2.avi", SEEKS, seek=True), ref[SEEKS])  # seeks: other frames


def test_decord_differs_on_the_real_mpeg_ps_clip(realdata):
    path = realdata / "cityCC0.mpg"
    ref = read_frames(path, range(190))
    assert len(ref) == 190
    assert not _same(_decord(path, range(190), seek=False), ref)
