"""Clip policy: trim, min length, near-equal chunks of long shots, VFR chunking by time."""

import numpy as np
import pytest

from splitter.base import Decoded, Shot, spans_to_shots
from splitter.policy import ClipPolicy, chunk, shots_to_clips


def cfr(n, fps=25.0):
    return Decoded(pts=np.arange(n) / fps, fps=fps, width=320, height=180)


def shot(d, a, b):
    return Shot(d.end_time(a), d.end_time(b), a, b)


def test_spans_become_touching_or_gapped_shots():
    d = cfr(100)
    shots = spans_to_shots([(30, 30), (50, 60), (0, 0), (100, 100)], d)
    assert [(s.start_frame, s.end_frame) for s in shots] == [(0, 30), (30, 50), (60, 100)]
    assert shots[1].start_sec == pytest.approx(1.2) and shots[-1].end_sec == pytest.approx(4.0)


def test_trim_and_min_length():
    d = cfr(400)
    clips = shots_to_clips([shot(d, 0, 51), shot(d, 51, 100), shot(d, 100, 400)], d, "v.mp4", "ab" * 32,
                           ClipPolicy(min_sec=2.0, max_sec=20.0, trim_frames=1))
    # 51 frames - 2 trimmed = 49 frames = 1.96 s < 2 s: dropped; so is the 49-frame shot
    assert [(c.start_frame, c.end_frame) for c in clips] == [(101, 399)]
    c = clips[0]
    assert c.num_frames == 298 and c.start_sec == pytest.approx(4.04) and c.end_sec == pytest.approx(15.96)
    assert c.width == 320 and c.aspect_ratio == pytest.approx(180 / 320) and len(c.clip_id) == 20


def test_long_shots_are_cut_into_near_equal_chunks_not_truncated():
    d = cfr(1300)  # 52 s
    clips = shots_to_clips([shot(d, 0, 1300)], d, "v.mp4", "cd" * 32, ClipPolicy(2.0, 20.0, 0))
    lengths = [c.num_frames for c in clips]
    assert len(clips) == 3 and sum(lengths) == 1300 and max(lengths) - min(lengths) <= 1
    assert all(c.end_sec - c.start_sec <= 20.0 for c in clips)
    assert all(a.end_frame == b.start_frame for a, b in zip(clips, clips[1:]))


@pytest.mark.parametrize("frames,want", [(88, [(7, 82)]), (100, [(0, 50), (50, 100)]), (140, [(0, 70), (70, 140)])])
def test_a_shot_no_split_fits_keeps_centred_max_length_windows(frames, want):
    # min 2 s, max 3 s: a 3.52 s shot cannot be cut into pieces of 2..3 s; one centred 3 s window is kept
    d = cfr(frames)
    clips = shots_to_clips([shot(d, 0, frames)], d, "v.mp4", "ef" * 32, ClipPolicy(2.0, 3.0, 0))
    assert [(c.start_frame, c.end_frame) for c in clips] == want
    assert all(2.0 - 1e-6 <= c.end_sec - c.start_sec <= 3.0 + 1e-6 for c in clips)


def test_vfr_chunks_by_time():
    # 10 s at 50 fps then 10 s at 5 fps: halves by time, not by frame count
    pts = np.concatenate([np.arange(500) / 50, 10 + np.arange(50) / 5])
    d = Decoded(pts=pts, fps=27.5, width=64, height=64)
    pieces = chunk(0, 550, d, 12.0)
    assert len(pieces) == 2 and 490 <= pieces[0][1] <= 500  # by frame count the cut would be at 275


def test_bad_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="--max-sec"):
        ClipPolicy(min_sec=5, max_sec=2)
    with pytest.raises(ValueError, match="--trim-frames"):
        ClipPolicy(trim_frames=-1)


def test_short_shots_join_the_shot_they_touch():
    d = cfr(100)
    cut = lambda *ks: [(k, k) for k in ks]  # noqa: E731
    ranges = lambda spans, m: [(s.start_frame, s.end_frame) for s in spans_to_shots(spans, d, m)]  # noqa: E731
    assert ranges(cut(1, 50), 4) == [(0, 50), (50, 100)]  # one opening frame: into the next shot
    assert ranges(cut(1, 50), 1) == [(0, 1), (1, 50), (50, 100)]
    assert ranges(cut(50, 97), 4) == [(0, 50), (50, 100)]  # a short last shot: into the previous one
    assert ranges(cut(50, 51, 52), 4) == [(0, 50), (50, 100)]  # one-frame flickers: gathered into the next
    assert ranges([(40, 40), (42, 60)], 4) == [(0, 42), (60, 100)]  # touches only the previous shot
    assert ranges([(30, 40), (42, 60)], 4) == [(0, 30), (40, 42), (60, 100)]  # between two fades: stays
    assert ranges([], 4) == [(0, 100)] and ranges([], 1000) == [(0, 100)]  # a whole short video stays


def test_too_short_names_the_trim_that_made_a_shot_too_short():
    from splitter.policy import explain_no_clips

    d = cfr(200)
    policy = ClipPolicy(min_sec=2.0, max_sec=20.0, trim_frames=1)
    two_s = [shot(d, 0, 50), shot(d, 50, 80)]  # 2.00 s and 1.20 s: 1.92 s once trimmed
    assert shots_to_clips(two_s, d, "v.mp4", "ab" * 32, policy) == []
    assert explain_no_clips(two_s, d, policy) == ("too short: no clip of at least 2 s (2 shots; longest shot "
                                                  "2.00 s, 1.92 s after trimming 1 frame at each edge "
                                                  "< --min-sec 2)")
    # shorter than --min-sec before any trimming: the trim is not blamed
    assert explain_no_clips([shot(d, 50, 80)], d, policy) == ("too short: no clip of at least 2 s (1 shot; "
                                                              "longest shot 1.20 s)")
    one = cfr(1)
    assert explain_no_clips([shot(one, 0, 1)], one, ClipPolicy(0.0, 20.0, 1)) == (
        "too short: no clip of at least 0 s (1 shot; longest shot 0.04 s, nothing left after trimming 1 frame "
        "at each edge)")
    assert explain_no_clips(two_s, d, ClipPolicy(2.0, 20.0, 3)).endswith("1.76 s after trimming 3 frames at "
                                                                          "each edge < --min-sec 2)")
