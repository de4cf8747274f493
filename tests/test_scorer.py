"""The offline scorers against synthetic clips with known truth, through `score-clips` itself.

One video of 20-frame segments (10 fps, 480x384, so frames are scored at 320x256 and every pixel motion is
2/3 of the source's): a still texture, the texture translated k px/frame (k = 1.5, 3, 6) and in each
direction, zooms, a burned-in subtitle, a blurred copy, black frames. Each segment is one clip.
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from index.files import file_sha256
from index.manifest import read_failed, read_manifest, write_manifest
from index.record import Clip
from index.video import write_video
from scorer.base import decode_size, spread
from scorer.camera import LABELS, clip_label, fit_camera
from scorer.cli import main
from scorer.stage import plan_frames

W, H, FPS, N = 480, 384, 10.0, 20
SCALE = 256 / H  # source pixels -> scored pixels


def texture(seed: int = 0, size=(1400, 1400)) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (*size, 3)).astype(np.float32), (0, 0), 3.0)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


BIG = texture()


def moving(dx: float, dy: float, n: int = N) -> list[np.ndarray]:
    """Content moving by (dx, dy) px/frame: the window moves the other way over the texture."""
    x0, y0 = 500, 500
    return [np.ascontiguousarray(BIG[int(round(y0 - dy * t)):int(round(y0 - dy * t)) + H,
                                     int(round(x0 - dx * t)):int(round(x0 - dx * t)) + W]) for t in range(n)]


def zooming(rate: float, n: int = N) -> list[np.ndarray]:
    """Content growing (rate > 0) or shrinking by `rate` per frame about the centre."""
    import cv2

    cy, cx = 700, 700
    out = []
    for t in range(n):
        m = cv2.getRotationMatrix2D((cx, cy), 0, (1 + rate) ** t)
        img = cv2.warpAffine(BIG, m, BIG.shape[1::-1])
        out.append(np.ascontiguousarray(img[cy - H // 2:cy + H // 2, cx - W // 2:cx + W // 2]))
    return out


def subtitled(frames: list[np.ndarray], lines: list[str]) -> list[np.ndarray]:
    """White text with a black outline in the bottom band, the words changing halfway, as subtitles do."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=30)
    out = []
    for t, frame in enumerate(frames):
        img = Image.fromarray(frame)
        draw = ImageDraw.Draw(img)
        text = lines[t * len(lines) // len(frames)]
        width = draw.textlength(text, font=font)
        draw.text(((W - width) / 2, H - 70), text, font=font, fill=(255, 255, 255), stroke_width=2,
                  stroke_fill=(0, 0, 0))
        out.append(np.asarray(img))
    return out


def blurred(frames: list[np.ndarray]) -> list[np.ndarray]:
    import cv2

    return [cv2.GaussianBlur(f, (0, 0), 2.5) for f in frames]


def segments() -> dict[str, list[np.ndarray]]:
    still = moving(0, 0)
    return {
        "still": still,
        "k1": moving(-1.5, 0), "k2": moving(-3, 0), "k4": moving(-6, 0),  # content left: the camera pans right
        "pan_left": moving(4.5, 0), "tilt_up": moving(0, 4.5), "tilt_down": moving(0, -4.5),
        "zoom_in": zooming(0.02), "zoom_out": zooming(-0.02),
        "subtitle": subtitled(still, ["Where are you going tonight?", "Back to the old house by the sea."]),
        "blurred": blurred(still),
        "black": [np.zeros((H, W, 3), np.uint8)] * (N // 2) + still[:N // 2],
    }


def make_manifest(folder: Path, name: str = "truth") -> tuple[Path, dict[str, str]]:
    """One video of all segments, one clip per segment plus one clip of the whole video: (manifest, {name: id})."""
    parts = segments()
    video = folder / f"{name}.mp4"
    write_video(video, [f for frames in parts.values() for f in frames], FPS)
    sha = file_sha256(video)
    rows, ids, start = [], {}, 0
    for seg, frames in parts.items():
        clip = Clip.from_range(str(video), sha, start, start + len(frames), start / FPS, (start + len(frames)) / FPS,
                               FPS, W, H)
        rows.append(clip.to_dict())
        ids[seg] = clip.clip_id
        start += len(frames)
    whole = Clip.from_range(str(video), sha, 0, start, 0.0, start / FPS, FPS, W, H)
    rows.append(whole.to_dict())
    ids["whole"] = whole.clip_id
    manifest = folder / "clips.parquet"
    write_manifest(pd.DataFrame(rows), manifest)
    return manifest, ids


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("truth")
    manifest, ids = make_manifest(folder)
    assert main([str(manifest), "-o", str(folder / "out"), "--quiet"]) == 0
    df = read_manifest(folder / "out" / "clips.parquet").set_index("clip_id")
    return {name: df.loc[cid] for name, cid in ids.items()}, folder


# ---------------------------------------------------------------- pieces


def test_decode_size_puts_the_short_side_at_256():
    assert decode_size(1920, 1080) == (456, 256)
    assert decode_size(1080, 1920) == (256, 456)
    assert decode_size(480, 384) == (320, 256)
    assert decode_size(160, 96) == (426, 256)  # small sources are scaled up: motion stays in one unit


def test_frame_plan_samples_at_the_rate_with_a_follower_for_each():
    row = {"start_frame": 100, "end_frame": 150, "fps": 25.0}
    sampled, after, pair_of = plan_frames(row, 2.0)
    assert len(sampled) == 4 and all(100 <= i < 150 for i in sampled)
    assert after == [sampled[k] + 1 for k in pair_of] and len(after) == 4
    sampled, after, pair_of = plan_frames({"start_frame": 0, "end_frame": 3, "fps": 25.0}, 2.0)
    assert sampled == [0, 1, 2] and after == [1, 2] and pair_of == [0, 1]  # short clips keep 3 frames
    assert plan_frames({"start_frame": 7, "end_frame": 8, "fps": 25.0}, 2.0) == ([7], [], [])
    assert spread(10, 3) == [0, 4, 9] and spread(2, 3) == [0, 1]


def test_camera_fit_names_each_direction_on_exact_flow_fields():
    h, w = 64, 96
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = xs - (w - 1) / 2, ys - (h - 1) / 2

    def field(u, v):
        return np.stack([np.broadcast_to(u, (h, w)), np.broadcast_to(v, (h, w))], -1).astype(np.float32)

    cases = {"pan_right": field(-2, 0), "pan_left": field(2, 0), "tilt_up": field(0, 2), "tilt_down": field(0, -2),
             "zoom_in": field(0.05 * x, 0.05 * y), "zoom_out": field(-0.05 * x, -0.05 * y),
             "static": field(0.01, 0)}
    for want, flow in cases.items():
        assert fit_camera(flow)["label"] == want, want
    rng = np.random.default_rng(0)
    jitter = [fit_camera(field(*rng.choice([-3, 3], 2))) for _ in range(6)]
    assert clip_label(jitter) == "shaky"
    assert clip_label([fit_camera(cases["pan_left"])] * 4) == "pan_left"
    assert clip_label([]) is None
    # a moving object over a still background is a static camera
    obj = field(0, 0).copy()
    obj[10:30, 20:40] = (5, 0)
    assert fit_camera(obj)["label"] == "static"


# ---------------------------------------------------------------- through score-clips


def test_motion_is_pixels_per_frame_at_256_and_grows_with_speed(scored):
    s, _ = scored
    assert s["still"]["motion"] < 0.05 and s["still"]["motion_max"] < 0.1
    got = [s[k]["motion"] for k in ("k1", "k2", "k4")]
    assert got[0] < got[1] < got[2]
    for speed, value in zip((1.5, 3.0, 6.0), got):
        assert value == pytest.approx(speed * SCALE, rel=0.2)
    assert s["k4"]["motion_max"] >= s["k4"]["motion"]


def test_camera_motion_names_the_camera_direction(scored):
    s, _ = scored
    assert s["still"]["camera_motion"] == "static"
    for name in ("k1", "k2", "k4"):
        assert s[name]["camera_motion"] == "pan_right"  # content moves left
    for name in ("pan_left", "tilt_up", "tilt_down", "zoom_in", "zoom_out"):
        assert s[name]["camera_motion"] == name
    assert set(pd.Series([v["camera_motion"] for v in s.values()])) <= set(LABELS)


def test_burned_in_subtitles_are_static_text(scored):
    s, _ = scored
    assert s["subtitle"]["text_area"] > 0.01
    assert bool(s["subtitle"]["text_static"]) is True
    assert s["still"]["text_area"] < 0.001 and bool(s["still"]["text_static"]) is False


def test_blur_lowers_sharpness_and_black_frames_count(scored):
    s, _ = scored
    assert s["blurred"]["sharpness"] < 0.5 * s["still"]["sharpness"]
    assert s["black"]["black_frac"] == pytest.approx(0.5)
    assert s["still"]["black_frac"] == 0.0
    assert s["black"]["brightness"] < s["still"]["brightness"] and 40 < s["still"]["brightness"] < 220


def test_bpp_of_the_whole_video_is_its_packet_bits_per_pixel(scored):
    s, folder = scored
    with av.open(str(folder / "truth.mp4")) as c:
        stream = c.streams.video[0]
        total = sum(p.size for p in c.demux(stream) if p.size)
        pixels = stream.codec_context.width * stream.codec_context.height
    frames = len(segments()) * N
    assert s["whole"]["bpp"] == pytest.approx(total * 8 / (frames * pixels))
    assert all(v["bpp"] > 0 for v in s.values())


def test_output_keeps_the_input_columns_and_adds_typed_scores(scored):
    _, folder = scored
    out = read_manifest(folder / "out" / "clips.parquet")
    src = read_manifest(folder / "clips.parquet")
    assert list(out.columns[:len(src.columns)]) == list(src.columns)
    pd.testing.assert_frame_equal(out[src.columns], src)
    assert out["text_static"].dtype == bool and pd.api.types.is_string_dtype(out["camera_motion"])
    for col in ("motion", "motion_max", "sharpness", "brightness", "black_frac", "text_area", "bpp"):
        assert out[col].dtype == np.float64 and out[col].notna().all(), col
    assert "aesthetic" not in out.columns and "text_match" not in out.columns  # no model here by default
    assert read_failed(folder / "out") == []


def test_rescoring_adds_only_new_clips_and_keeps_old_values(scored, tmp_path):
    _, folder = scored
    src = read_manifest(folder / "clips.parquet")
    out = tmp_path / "out"
    write_manifest(src.iloc[:3], tmp_path / "first.parquet")
    assert main([str(tmp_path / "first.parquet"), "-o", str(out), "--quiet", "--scorers", "motion,bpp"]) == 0
    parts = out / ".parts" / "score"
    before = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.parquet")}
    assert main([str(folder / "clips.parquet"), "-o", str(out), "--quiet", "--scorers", "motion,bpp"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.parquet")}
    assert len(after) == len(before) + 1 and all(after[k] == v for k, v in before.items())
    got = read_manifest(out / "clips.parquet")
    assert len(got) == len(src) and got["clip_id"].is_unique
    assert list(got.columns) == [*src.columns, "motion", "motion_max", "bpp"]
    ref = read_manifest(folder / "out" / "clips.parquet").set_index("clip_id")
    mine = got.set_index("clip_id")
    np.testing.assert_allclose(mine["motion"], ref.loc[mine.index, "motion"])
    assert math.isclose(mine["bpp"].sum(), ref["bpp"].sum())


def test_motion_ranks_real_shots_like_full_resolution_farneback(realdata, realcuts):
    """On real footage (a night sky with sensor noise, a bike crossing a white road) DIS fills flat areas with
    the motion next to them; counting those as still ranks clips as Farneback at full resolution does."""
    import cv2

    from index.video import iter_many, probe
    from scorer import SCORERS, make_flow, score_source

    motion, reference = [], []
    for name in ("bikes.mp4", "cityCC0.mpg"):
        path = realdata / name
        info, sha = probe(path), file_sha256(path)
        edges = [0] + [int(round(t * info.fps)) for t in realcuts[name]["hard"]] + [realcuts[name]["frames"]]
        rows = [Clip.from_range(str(path), sha, a, b, a / info.fps, b / info.fps, info.fps, info.width,
                                info.height).to_dict() for a, b in zip(edges[:-1], edges[1:])]
        out = score_source(path, rows, [SCORERS["motion"]()], make_flow()).rows.set_index("clip_id")
        plans = {r["clip_id"]: plan_frames(r, 2.0) for r in rows}
        for cid, images in iter_many(path, {c: s + a for c, (s, a, _) in plans.items()}):  # full resolution
            sampled, _, pair_of = plans[cid]
            grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in images]
            flows = [cv2.calcOpticalFlowFarneback(grey[k], grey[len(sampled) + j], None, 0.5, 3, 15, 3, 5, 1.2, 0)
                     for j, k in enumerate(pair_of)]
            reference.append(np.mean([np.linalg.norm(f, axis=-1).mean() for f in flows]))
            motion.append(out.loc[cid, "motion"])
    assert len(motion) == 8
    rho = pd.Series(motion).rank().corr(pd.Series(reference).rank())
    assert rho >= 0.9, (motion, reference)
