"""TransNetV2: the faster module computes the published model's probabilities; transitions from them."""

import numpy as np
import pytest
import torch

from index import synth
from index.video import iter_frames
from splitter import detect_shots, make_detector
from splitter.transnetv2 import load_model, probabilities_to_spans


@pytest.fixture(scope="module")
def layout_video(tmp_path_factory):
    """cut, fade, dissolve, cut into a fast-moving shot (no cut inside it), short dissolve."""
    path = tmp_path_factory.mktemp("tn") / "layout.mp4"
    truth = synth.make_video(path, [60, 50, 70, 40, synth.ShotSpec(60, seed=9, motion="fast"), 50],
                             ["cut", ("fade", 12), ("dissolve", 12), "cut", ("dissolve", 8)], size=(160, 96))
    return path, truth


@pytest.mark.slow
def test_fused_blocks_give_the_reference_probabilities(layout_video):
    path, _ = layout_video
    frames = np.stack([f.image for f in iter_frames(path, size=(48, 27))])
    ref = load_model(fused=False)
    ref_single, ref_many = ref.predict_frames(torch.from_numpy(frames), quiet=True)  # the package's recipe
    single, many = make_detector("transnetv2", precision="fp32").predict(iter(frames))
    assert single.shape == (len(frames),) and many.shape == (len(frames),)
    np.testing.assert_allclose(single, ref_single.numpy(), atol=1e-5)
    np.testing.assert_allclose(many, ref_many.numpy(), atol=1e-5)


@pytest.mark.slow
def test_bfloat16_keeps_the_transitions(layout_video):
    path, _ = layout_video
    frames = np.stack([f.image for f in iter_frames(path, size=(48, 27))])
    exact = make_detector("transnetv2", precision="fp32")
    fast = make_detector("transnetv2", precision="bf16")
    (s32, m32), (s16, m16) = exact.predict(iter(frames)), fast.predict(iter(frames))
    assert np.abs(s32 - s16).max() < 0.02 and np.abs(m32 - m16).max() < 0.05
    assert exact.transitions(iter(frames), 25.0) == fast.transitions(iter(frames), 25.0)


def test_loading_leaves_global_torch_state_alone():
    torch.use_deterministic_algorithms(False)
    state = torch.get_rng_state()
    load_model()
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.equal(state, torch.get_rng_state())


def test_shots_match_the_ground_truth(layout_video):
    path, truth = layout_video
    shots = detect_shots(path)
    assert len(shots) == len(truth.shots)
    for shot, (a, b) in zip(shots, truth.shots):
        # predicted shots hold only pure shot frames, within two frames of the true edges
        assert a <= shot.start_frame <= a + 2 and b - 2 <= shot.end_frame <= b, (shot, (a, b))
    hard = [round(t * truth.fps) for t in truth.hard_cuts]
    touching = [b.start_frame for a, b in zip(shots, shots[1:]) if a.end_frame == b.start_frame]
    assert touching == hard  # hard cuts exact; transitions leave gaps
    assert shots[0].start_sec == 0.0 and abs(shots[-1].end_sec - truth.num_frames / truth.fps) < 1e-6


def test_longer_windows_keep_the_transitions(layout_video):
    path, _ = layout_video
    frames = np.stack([f.image for f in iter_frames(path, size=(48, 27))])
    recipe, long = make_detector("transnetv2"), make_detector("transnetv2", step=200)
    s50, _ = recipe.predict(iter(frames))
    s200, _ = long.predict(iter(frames))
    assert s200.shape == s50.shape and np.abs(s200 - s50).max() < 0.1
    assert recipe.transitions(iter(frames), 25.0) == long.transitions(iter(frames), 25.0)


def test_spans_from_probabilities():
    single = np.zeros(40, np.float32)
    many = np.zeros(40, np.float32)
    single[9] = 0.9  # a hard cut: frame 9 is the last of its shot
    many[9] = 0.9
    many[20:30] = 0.7  # a fade the single-frame head is unsure about
    single[24] = 0.45
    assert probabilities_to_spans(single, many) == [(10, 10), (20, 30)]
    assert probabilities_to_spans(np.zeros(5), np.zeros(5)) == []
