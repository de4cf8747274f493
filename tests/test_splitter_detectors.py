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


def test_a_video_opening_on_one_black_frame_has_no_one_frame_shot(tmp_path):
    import numpy as np

    from index.video import write_video

    frames, _ = synth.render([50, 50], size=(160, 96))
    write_video(tmp_path / "black.mp4", np.concatenate([np.zeros_like(frames[:1]), frames]), 25)
    # TransNetV2 does call the black frame a shot of its own: without merging it stays one
    unmerged = detect_shots(tmp_path / "black.mp4", min_shot_frames=1)
    assert [(s.start_frame, s.end_frame) for s in unmerged] == [(0, 1), (1, 51), (51, 101)]
    shots = detect_shots(tmp_path / "black.mp4")  # the default merges it into the shot it opens
    assert [(s.start_frame, s.end_frame) for s in shots] == [(0, 51), (51, 101)]
    assert shots[0].start_sec == 0.0 and shots[1].start_sec == pytest.approx(2.04)


def test_pyscenedetect_detectors_are_one_class_named_by_the_registry():
    import scenedetect.detectors

    from splitter.base import MIN_SHOT_FRAMES
    from splitter.pyscenedetect import PySceneDetect

    library = {"adaptive": "AdaptiveDetector", "content": "ContentDetector", "histogram": "HistogramDetector",
               "hash": "HashDetector"}
    for name, cls in library.items():
        det = make_detector(name)
        assert type(det) is PySceneDetect and det.name == name and det.min_shot_frames == MIN_SHOT_FRAMES
        assert type(det.library_detector()) is getattr(scenedetect.detectors, cls)
    assert make_detector("content", min_shot_frames=9).min_shot_frames == 9  # ours, not the library's
    with pytest.raises(ValueError, match="min_shot_frames must be >= 1"):
        make_detector("content", min_shot_frames=0)


def test_the_detector_base_class_is_abstract():
    import numpy as np

    from splitter.base import ShotDetector

    with pytest.raises(TypeError):
        ShotDetector()

    class NoTransitions(ShotDetector):
        pass

    with pytest.raises(TypeError):
        NoTransitions()

    class EveryFifth(ShotDetector):
        def transitions(self, frames, fps):
            return [(i, i) for i, _ in enumerate(frames) if i and i % 5 == 0]

    assert EveryFifth().transitions(iter([np.zeros((2, 2, 3), np.uint8)] * 11), 25.0) == [(5, 5), (10, 10)]
