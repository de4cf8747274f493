"""Every detector on synthetic hard cuts; PySceneDetect fed from our decode agrees with the library;
TransNetV2 on the real clips."""

import pytest

from index import synth
from splitter import DETECTORS, detect_shots, make_detector


@pytest.fixture(scope="module")
def cuts_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("det") / "cuts.mp4"
    # seeds whose backgrounds differ in colour: PySceneDetect's HistogramDetector (YUV histogram
    # correlation, default threshold) misses cuts between some synthetic textures of similar hue
    shots = [synth.ShotSpec(50, seed=11), synth.ShotSpec(45, seed=22), synth.ShotSpec(55, seed=33)]
    truth = synth.make_video(path, shots, ["cut", "cut"], size=(320, 180))
    return path, [round(t * truth.fps) for t in truth.hard_cuts], truth.num_frames


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_each_detector_finds_hard_cuts(cuts_video, name):
    path, cuts, n = cuts_video
    shots = detect_shots(path, detector=name)
    starts = [s.start_frame for s in shots[1:]]
    assert len(starts) == len(cuts) and all(abs(a - b) <= 1 for a, b in zip(starts, cuts)), (name, shots)
    assert shots[0].start_frame == 0 and shots[-1].end_frame == n


def test_adaptive_on_one_decode_matches_the_library(realdata):
    from scenedetect import AdaptiveDetector, detect

    for name in ("bikes.mp4", "cityCC0.mpg"):
        library = [s[0].frame_num for s in detect(str(realdata / name), AdaptiveDetector())[1:]]
        ours = [s.start_frame for s in detect_shots(realdata / name, detector="adaptive")[1:]]
        assert len(ours) == len(library) and all(abs(a - b) <= 1 for a, b in zip(ours, library)), name


def test_transnetv2_on_real_clips(realdata, realcuts):
    for name in ("bikes.mp4", "cityCC0.mpg"):
        shots = detect_shots(realdata / name)
        starts = [s.start_sec for s in shots[1:]]
        truth = realcuts[name]["hard"]
        assert len(starts) == len(truth), (name, starts)
        assert all(abs(a - b) <= 0.1 for a, b in zip(starts, truth)), (name, starts, truth)
        assert sum(s.num_frames for s in shots) == realcuts[name]["frames"]  # hard cuts only: no gaps


def test_detector_errors_are_one_line():
    with pytest.raises(ValueError, match="unknown detector 'nope'; choose one of"):
        make_detector("nope")
    with pytest.raises(ValueError, match="bad options for detector 'adaptive'"):
        make_detector("adaptive", no_such_option=1)
