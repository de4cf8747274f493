"""index.video on the bad-input corpus: clear one-line errors, or frames as displayed with PTS times."""

import numpy as np
import pytest

import hostile
from index.video import VideoError, iter_frames, probe


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    return d, hostile.make_corpus(d)


@pytest.mark.parametrize("name", [n for n, c in hostile.CASES.items() if c[1] == "fail" and c[3] != "too short"])
def test_unusable_files_raise_one_line_reasons(corpus, name):
    d, cases = corpus
    with pytest.raises(VideoError) as e:
        probe(d / name)
        list(iter_frames(d / name))
    assert cases[name].reason in str(e.value) and "\n" not in str(e.value)


def test_first_pts_not_zero_counts_from_the_first_frame(corpus):
    d, _ = corpus
    info = probe(d / "first_pts_3s.mkv")
    assert info.start_sec == pytest.approx(3.0)
    times = [f.pts_sec for f in iter_frames(d / "first_pts_3s.mkv")]
    assert times[0] == 0.0 and times[-1] == pytest.approx(124 / 25) and len(times) == 125


def test_rotation_is_applied_as_displayed(corpus, tmp_path):
    d, _ = corpus
    info = probe(d / "rotated_90.mp4")
    # phones write this matrix for 90 degrees clockwise; ffmpeg reports -90 (counter-clockwise)
    assert info.rotation == 270 and (info.width, info.height) == (96, 160)
    shown = next(iter_frames(d / "rotated_90.mp4")).image
    hostile.good(tmp_path / "plain.mp4")  # the same pixels without the matrix
    stored = next(iter_frames(tmp_path / "plain.mp4")).image
    assert shown.shape == (160, 96, 3) and stored.shape == (96, 160, 3)
    # clockwise: the stored top-left corner is shown at the top-right
    np.testing.assert_array_equal(shown, np.rot90(stored, k=-1))
    small = next(iter_frames(d / "rotated_90.mp4", size=(27, 48))).image
    assert small.shape == (48, 27, 3)


def test_non_square_pixels_give_the_display_size(corpus):
    d, _ = corpus
    info = probe(d / "anamorphic_2to1.mp4")
    assert info.sar == 2.0 and (info.coded_width, info.coded_height) == (160, 96)
    assert (info.width, info.height) == (320, 96)
    assert next(iter_frames(d / "anamorphic_2to1.mp4")).image.shape == (96, 320, 3)


def test_vfr_times_come_from_pts(corpus):
    d, _ = corpus
    times = np.array([f.pts_sec for f in iter_frames(d / "vfr.mkv")])
    steps = np.round(np.diff(times), 3)
    assert set(steps[:60]) == {0.04} and set(steps[-10:]) == {0.1}


def test_truncated_with_index_in_front_decodes_what_is_there(corpus):
    d, _ = corpus
    n = sum(1 for _ in iter_frames(d / "truncated_faststart.mp4"))
    assert 0 < n < 125


def test_odd_names_open(corpus):
    d, _ = corpus
    for name in ("name with spaces.mp4", "vidéo_日本語_ü.mp4", "a;b $(x).mp4"):
        assert probe(d / name).num_frames == 125


@pytest.mark.parametrize("name", ["anamorphic_2to1.mp4", "vfr.mkv", "name with spaces.mp4"])
@pytest.mark.parametrize("size", [None, (48, 27)])
def test_one_scaler_per_pass_gives_the_pixels_of_per_frame_reformat(corpus, name, size):
    import av

    d, _ = corpus
    ours = [f.image for f in iter_frames(d / name, size=size)]
    h, w = ours[0].shape[:2]
    with av.open(str(d / name)) as c:
        theirs = [f.reformat(width=w, height=h, format="rgb24").to_ndarray() for f in c.decode(video=0)]
    assert len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_iter_many_hands_each_clip_on_when_the_decode_passes_it(corpus):
    from index.video import iter_many, read_frames, read_many

    path = corpus[0] / "vfr.mkv"
    n = sum(1 for _ in iter_frames(path))
    requests = {"late": [n - 3, n - 1], "early": [0, 2, 2], "empty": [], "gone": [1, n + 5], "mid": [4, 5]}
    got = list(iter_many(path, requests))
    assert [k for k, _ in got] == ["empty", "early", "mid", "late"]  # "gone" runs past the end: never yielded
    for key, arr in got[1:]:
        np.testing.assert_array_equal(arr, read_frames(path, requests[key]))
    with pytest.raises(VideoError, match=f"frame {n + 5} requested"):
        read_many(path, requests)
    assert set(read_many(path, requests, drop_missing=True)) == {"late", "early", "empty", "mid"}


def _reference_decode(path) -> list[np.ndarray]:
    """Every frame plain PyAV gets on one thread: bad packets skipped, the decoder drained at the end."""
    import av

    out = []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_count = 1
        for packet in [*c.demux(stream), None]:
            try:
                frames = stream.codec_context.decode(packet)
            except av.error.FFmpegError:
                continue
            out += [f.to_ndarray(format="rgb24") for f in frames]
    return out


@pytest.mark.parametrize("name", ["damaged.mp4", "truncated_faststart.mp4", "first_gop_damaged.mp4"])
def test_damaged_streams_give_the_single_threaded_decoders_frames(corpus, name):
    # frame threads concealed the damage differently run to run and lost frames at a truncated end
    d, _ = corpus
    ours = [f.image for f in iter_frames(d / name)]
    reference = _reference_decode(d / name)
    assert len(ours) == len(reference) and all(np.array_equal(a, b) for a, b in zip(ours, reference))


def test_a_lost_first_group_of_pictures_is_skipped_by_probe_as_by_the_reader(corpus):
    d, _ = corpus
    info = probe(d / "first_gop_damaged.mp4")  # was "undecodable frames" while the reader got 100 frames
    times = [f.pts_sec for f in iter_frames(d / "first_gop_damaged.mp4")]
    assert info.start_sec == pytest.approx(1.0) and len(times) == 100 and times[0] == 0.0


def test_cover_art_is_not_the_video(corpus):
    d, _ = corpus
    with pytest.raises(VideoError, match="audio only, no video stream \\(only cover art\\)"):
        probe(d / "song_with_cover.mp4")  # was a one-frame video at 90000 fps, then "too short"
    info = probe(d / "still_track_first.mkv")  # a one-picture track first, then the film
    assert (info.codec, info.width, info.height) == ("h264", 160, 96)
    assert sum(1 for _ in iter_frames(d / "still_track_first.mkv")) == 125


def test_a_fifo_or_a_folder_is_refused_not_read(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.mp4")  # opening it for reading would wait for a writer forever
    (tmp_path / "folder.mp4").mkdir()
    for name in ("pipe.mp4", "folder.mp4"):
        for read in (probe, lambda p: list(iter_frames(p))):
            with pytest.raises(VideoError, match="not a regular file"):
                read(tmp_path / name)
