"""Scores that compare across source resolutions: the same real frame imported at 180p, 360p, 720p and 1080p.

The frame is one of cityCC0.mpg (real camera footage, 720x405, from the `realdata` fixture): 180p and 360p are
area downscales of it, 720p and 1080p Lanczos upscales (no real frame of 1080 lines ships with the tests; the
decoder brings both back to a 256-pixel short side, so what they test is that path). Each size is encoded as a
short video and scored through `score_source`, as score-clips scores an imported source.
"""

from __future__ import annotations

import numpy as np
import pytest

from index.files import file_sha256
from index.record import Clip
from index.video import read_frames, write_video
from scorer import SCORERS, make_flow, score_source
from scorer.base import decode_size
from scorer.sharpness import laplacian_variance

SHORTS = (180, 360, 720, 1080)
BAND = 1.6  # max / min sharpness of the same frame over the four sizes (README, score-clips)
BLUR = 0.6  # Gaussian sigma in pixels per 180 pixels of short side: the same blur relative to the picture
FPS = 25.0


def ladder(frame: np.ndarray) -> dict[int, np.ndarray]:
    import cv2

    h, w = frame.shape[:2]
    return {s: cv2.resize(frame, (int(round(w * s / h / 2)) * 2, s),
                          interpolation=cv2.INTER_AREA if s < h else cv2.INTER_LANCZOS4) for s in SHORTS}


def blur(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (0, 0), BLUR * min(img.shape[:2]) / 180)


def scored(folder, name: str, img, scorers=("sharpness",), n: int = 3):
    """`img`'s score as an n-frame still source (the first scorer's column); a list of frames: the rows."""
    frames = img if isinstance(img, list) else [img] * n
    path = write_video(folder / f"{name}.mp4", frames, FPS)
    h, w = frames[0].shape[:2]
    row = Clip.from_range(str(path), file_sha256(path), 0, len(frames), 0.0, len(frames) / FPS, FPS, w, h)
    out = score_source(path, [row.to_dict()], [SCORERS[s]() for s in scorers], make_flow()).rows.iloc[0]
    return out if isinstance(img, list) else float(out[scorers[0]])


@pytest.fixture(scope="module")
def frame(realdata) -> np.ndarray:
    return read_frames(realdata / "cityCC0.mpg", [60])[0]


def test_only_sources_under_256_are_decoded_at_their_own_size():
    assert decode_size(1920, 1080, upscale=False) == decode_size(1920, 1080) == (456, 256)
    assert decode_size(320, 180, upscale=False) == (320, 180)
    assert decode_size(240, 320, upscale=False) == (240, 320)
    assert decode_size(320, 180) == (456, 256)  # what the other scores read, scaled up after the decode


def test_sharpness_of_one_real_frame_holds_across_sizes_and_blur_shows_at_each(frame, tmp_path):
    sizes = ladder(frame)
    sharp = {s: scored(tmp_path, f"sharp{s}", img) for s, img in sizes.items()}
    blurred = {s: scored(tmp_path, f"blur{s}", blur(img)) for s, img in sizes.items()}
    ratios = {s: blurred[s] / sharp[s] for s in SHORTS}
    assert max(sharp.values()) / min(sharp.values()) <= BAND, sharp
    assert all(r < 0.5 for r in ratios.values()), (sharp, blurred)


def test_a_small_source_is_measured_at_its_own_size_not_scaled_up(frame, tmp_path):
    """An upscale blurs: the 180p blurred copy read at 256 (as score-clips once decoded it) hides part of the
    blur that its own size shows, and `sharpness` reads the own size."""
    import cv2

    small = ladder(frame)[180]
    gray = lambda img, size: cv2.cvtColor(cv2.resize(img, size, interpolation=cv2.INTER_LINEAR),  # noqa: E731
                                          cv2.COLOR_RGB2GRAY)
    own, up = small.shape[1::-1], (456, 256)
    native = laplacian_variance(gray(blur(small), own)) / laplacian_variance(gray(small, own))
    upscaled = laplacian_variance(gray(blur(small), up)) / laplacian_variance(gray(small, up))
    measured = scored(tmp_path, "blur", blur(small)) / scored(tmp_path, "sharp", small)
    assert native < upscaled
    assert abs(measured - native) < abs(measured - upscaled), (measured, native, upscaled)


def test_motion_of_a_real_shot_holds_across_sizes(realdata, tmp_path):
    """Motion is in pixels per frame at 256 whatever the source: a real tilt (bikes.mp4's first shot, 640x272)
    at 180p, its own size and 1080p moves as much and is named the same."""
    import cv2

    clip = list(read_frames(realdata / "bikes.mp4", list(range(20))))
    h, w = clip[0].shape[:2]
    rows = {}
    for s in (180, h, 1080):
        size = (int(round(w * s / h / 2)) * 2, s)
        frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA if s < h else cv2.INTER_LANCZOS4) for f in clip]
        rows[s] = scored(tmp_path, f"motion{s}", frames, ("motion", "camera_motion"))
    motion = [r["motion"] for r in rows.values()]
    assert min(motion) > 0.5 and max(motion) / min(motion) < 1.15, motion
    assert len({r["camera_motion"] for r in rows.values()}) == 1, rows
