"""score-clips' offline scorers against the way Open-Sora and Data-Juicer run them, in the same run.

Baseline: one decode pass per scorer at full resolution, each reading the frames it samples (2 fps): motion
and camera motion each with Farneback flow between consecutive sampled frames on full-resolution grey
frames (Data-Juicer's video_motion_score settings), Laplacian variance and mean luma on full-resolution
frames, RapidOCR text detection at its default settings (short side upscaled to 736) on the same frames as
ours, and one demux pass for bits per pixel. Every baseline pass decodes a source once for all its clips
(their tools decode each cut clip on its own, which is no faster), so the ratio is if anything generous to
the baseline.

Ours: `scorer.score_source`: one decode per source at a 256-pixel short side, DIS flow, every scorer on the
same frames, plus the same demux pass.

Clips: synthetic 1280x720 sources of three camera shots each (still, panning at 0.2-8 px/frame in any
direction, or zooming, over a texture with detail at every scale; each shot is a clip, its true motion known)
and, when SHOTCAP_REALDATA holds them, the real clips bikes.mp4 and cityCC0.mpg cut at their shot boundaries.
(`index.synth`'s smooth sinusoid backgrounds are no use here: full-resolution Farneback sees almost no
motion in them, so the reference itself would be wrong.) Prints clips/s of each (median and min-max over
--repeats, the two alternating), the speed-up taken per repeat (median and min-max; target >= 3x), and the
Spearman rank correlation of our `motion` with full-resolution Farneback over the same frame pairs (target
>= 0.9), with the baseline's own Farneback between 2-fps samples and, on the synthetic clips, with the true
motion.

    python bench/scorer.py                        # 8 synthetic sources (24 clips) + 7 real clips, 3 repeats
    python bench/scorer.py --sources 2 --repeats 1 --seconds 4     # a dry run
    python bench/scorer.py --aesthetic-model random --device cuda  # + aesthetic clips/s (random ViT-L/14)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the scorer package, not this file

from _stats import interleave, load_average, per_repeat, repeats_note, spread  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from index.files import file_sha256  # noqa: E402
from index.record import Clip  # noqa: E402
from index.video import iter_many, probe, write_video  # noqa: E402
from scorer import SCORERS, make_flow, score_source  # noqa: E402
from scorer.bpp import clip_bits, packet_bits  # noqa: E402
from scorer.registry import OFFLINE  # noqa: E402
from scorer.stage import plan_frames  # noqa: E402
from scorer.text import box_mask  # noqa: E402

FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


# ---------------------------------------------------------------- clips


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Detail at every scale (fine grain to large blobs), so flow is observable everywhere at full resolution."""
    img = np.zeros((h, w, 3), np.float32)
    for sigma, weight in ((1.5, 0.5), (5.0, 1.0), (20.0, 1.5)):
        layer = cv2.GaussianBlur(rng.standard_normal((h, w, 3)).astype(np.float32), (0, 0), sigma)
        img += weight * layer / (layer.std() + 1e-6)
    return cv2.normalize(img, None, 10, 245, cv2.NORM_MINMAX).astype(np.uint8)


def camera_shot(rng: np.random.Generator, frames: int, size: tuple[int, int]) -> tuple[list[np.ndarray], float]:
    """A still, panning or zooming camera over a fresh texture: (frames, true mean motion in px/frame)."""
    w, h = size
    kind = rng.choice(["still", "pan", "pan", "zoom"])
    speed = rng.uniform(0.2, 8.0)
    angle = rng.uniform(0, 2 * np.pi)
    vx, vy = (speed * np.cos(angle), speed * np.sin(angle)) if kind == "pan" else (0.0, 0.0)
    rate = rng.uniform(0.003, 0.015) * rng.choice([-1, 1]) if kind == "zoom" else 0.0
    margin = int(abs(vx) * frames + abs(vy) * frames) + 8
    big = texture(rng, h + 2 * margin, w + 2 * margin)
    cx, cy = big.shape[1] / 2, big.shape[0] / 2
    out = []
    for t in range(frames):
        if kind == "zoom":
            m = cv2.getRotationMatrix2D((cx, cy), 0, (1 + rate) ** t)
            img = cv2.warpAffine(big, m, big.shape[1::-1])
        else:
            img = big
        x0, y0 = int(round(cx - w / 2 - vx * t)), int(round(cy - h / 2 - vy * t))
        out.append(np.ascontiguousarray(img[y0:y0 + h, x0:x0 + w]))
    ys, xs = np.mgrid[0:h, 0:w]
    radius = float(np.hypot(xs - w / 2, ys - h / 2).mean())
    return out, float(np.hypot(vx, vy) + abs(rate) * radius)


def synthetic_sources(folder: Path, count: int, seconds: float, size=(1280, 720)) -> tuple[list[dict], dict]:
    """Sources of three camera shots each (one clip per shot): (rows, {clip_id: true motion at 256})."""
    rows, truth = [], {}
    per = max(20, int(seconds * 25 / 3))
    for i in range(count):
        rng = np.random.default_rng(1000 + i)
        shots = [camera_shot(rng, per, size) for _ in range(3)]
        path = folder / f"synth{i}.mp4"
        write_video(path, [f for frames, _ in shots for f in frames], 25.0)
        clips = clips_of(path, [(k * per, (k + 1) * per) for k in range(3)])
        rows += clips
        truth.update({c["clip_id"]: speed * 256 / min(size) for c, (_, speed) in zip(clips, shots)})
    return rows, truth


def clips_of(path: Path, ranges) -> list[dict]:
    info, sha = probe(path), file_sha256(path)
    return [Clip.from_range(str(path), sha, a, b, a / info.fps, b / info.fps, info.fps, info.width,
                            info.height).to_dict() for a, b in ranges if b - a >= 10]


def real_sources() -> list[dict]:
    folder = Path(os.environ.get("SHOTCAP_REALDATA", ""))
    if not (folder / "cuts.json").is_file():
        return []
    cuts = json.loads((folder / "cuts.json").read_text())
    rows = []
    for name in ("bikes.mp4", "cityCC0.mpg"):
        if not (folder / name).is_file():
            continue
        fps = probe(folder / name).fps
        edges = [0] + [int(round(t * fps)) for t in cuts[name]["hard"]] + [int(cuts[name]["frames"])]
        rows += clips_of(folder / name, list(zip(edges[:-1], edges[1:])))
    return rows


def by_source(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["video_path"], []).append(r)
    return out


# ---------------------------------------------------------------- the baseline: one pass per scorer


def farneback(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK)


def baseline_source(path: str, rows: list[dict], ocr, sample_fps: float = 2.0) -> dict[str, dict]:
    plans = {r["clip_id"]: plan_frames(r, sample_fps)[0] for r in rows}
    scores: dict[str, dict] = {cid: {} for cid in plans}

    def frames():  # one full-resolution decode of the source
        return iter_many(path, plans)

    for cid, imgs in frames():  # pass 1: motion (Data-Juicer: Farneback between sampled frames)
        grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in imgs]
        mags = [np.linalg.norm(farneback(a, b), axis=-1).mean() for a, b in zip(grey, grey[1:])]
        scores[cid]["motion_farneback"] = float(np.mean(mags)) if mags else float("nan")
    for cid, imgs in frames():  # pass 2: camera motion (Farneback again, mean flow direction)
        grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in imgs]
        flows = [farneback(a, b) for a, b in zip(grey, grey[1:])]
        scores[cid]["camera_mean_flow"] = float(np.mean([f.mean() for f in flows])) if flows else 0.0
    for cid, imgs in frames():  # pass 3: blur
        scores[cid]["sharpness"] = float(np.median([cv2.Laplacian(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY),
                                                                  cv2.CV_64F).var() for f in imgs]))
    for cid, imgs in frames():  # pass 4: brightness
        scores[cid]["brightness"] = float(np.median([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).mean() for f in imgs]))
    for cid, imgs in frames():  # pass 5: OCR at RapidOCR's defaults
        pick = np.linspace(0, len(imgs) - 1, min(5, len(imgs))).round().astype(int)
        out = [ocr(np.ascontiguousarray(imgs[k][..., ::-1]), use_det=True, use_cls=False, use_rec=False)
               for k in pick]
        masks = [box_mask([] if o.boxes is None else list(o.boxes), imgs.shape[1:3]) for o in out]
        scores[cid]["text_area"] = float(np.median([m.mean() for m in masks]))
    bits, pixels = packet_bits(path)  # pass 6: bits per pixel
    for r in rows:
        total, n = clip_bits(bits, r["start_frame"], r["end_frame"])
        scores[r["clip_id"]]["bpp"] = total / (n * pixels) if n else float("nan")
    return scores


def reference_motion(sources: dict, sample_fps: float = 2.0) -> dict[str, float]:
    """Full-resolution Farneback over the same frame pairs as ours (each sampled frame and the next), in px/frame
    at a 256 short side: the like-for-like check of `motion` (untimed)."""
    out = {}
    for path, rows in sources.items():
        plans = {r["clip_id"]: plan_frames(r, sample_fps) for r in rows}
        scale = 256 / min(rows[0]["width"], rows[0]["height"])
        for cid, imgs in iter_many(path, {c: s + a for c, (s, a, _) in plans.items()}):
            sampled, after, pair_of = plans[cid]
            grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in imgs]
            mags = [np.linalg.norm(farneback(grey[k], grey[len(sampled) + j]), axis=-1).mean()
                    for j, k in enumerate(pair_of)]
            out[cid] = float(np.mean(mags)) * scale if mags else float("nan")
    return out


# ---------------------------------------------------------------- runs


def run_ours(sources: dict, scorers, flow) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = {}
    for path, rows in sources.items():
        part = score_source(path, rows, scorers, flow).rows
        out.update({r["clip_id"]: r for r in part.to_dict("records")})
    return time.perf_counter() - t0, out


def run_baseline(sources: dict, ocr) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = {}
    for path, rows in sources.items():
        out.update(baseline_source(path, rows, ocr))
    return time.perf_counter() - t0, out


def aesthetic_rate(sources: dict, model: str, device: str, batch: int) -> float:
    """Clips/s of the aesthetic scorer alone on our decoded frames (`random`: a random CLIP ViT-L/14 from its
    config, for throughput only)."""
    import torch

    from scorer.aesthetic import AestheticScorer, make_head
    from scorer.stage import BATCH

    if model == "random":
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

        folder = Path(tempfile.mkdtemp())
        cfg = CLIPConfig(projection_dim=768, vision_config=dict(hidden_size=1024, intermediate_size=4096,
                                                                num_hidden_layers=24, num_attention_heads=16,
                                                                patch_size=14, image_size=224))
        CLIPModel(cfg).save_pretrained(folder)
        CLIPImageProcessor().save_pretrained(folder)
        torch.save({f"layers.{k}": v for k, v in make_head(768).state_dict().items()},
                   folder / "aesthetic-model.pth")
        model = str(folder)
    scorer = AestheticScorer(model, device=device, batch_size=batch)
    scorer.check()
    scorer.load()
    clips = []
    for path, rows in sources.items():  # the frames only: decode is not part of this figure
        probe_scorer = _Collect()
        score_source(path, rows, [probe_scorer], None)
        clips += probe_scorer.clips
    scorer.score_batch(clips[:2])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(clips), BATCH):
        scorer.score_batch(clips[i:i + BATCH])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(clips) / (time.perf_counter() - t0)


class _Collect(SCORERS["brightness"]):
    """Keeps the ClipFrames it is handed (for timing a model scorer without the decode)."""

    def __init__(self):
        self.clips = []

    def score(self, clip):
        self.clips.append(clip)
        return super().score(clip)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=8, help="synthetic 1280x720 sources (3 shots each)")
    ap.add_argument("--seconds", type=float, default=9.0, help="length of each synthetic source")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-real", action="store_true", help="leave out the real clips of SHOTCAP_REALDATA")
    ap.add_argument("--aesthetic-model", default=None, help="also time aesthetic (a model id/folder or 'random')")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    from rapidocr import RapidOCR

    work = Path(tempfile.mkdtemp(prefix="bench-scorer-"))
    rows, truth = synthetic_sources(work, args.sources, args.seconds)
    rows += [] if args.no_real else real_sources()
    sources = by_source(rows)
    scorers = [SCORERS[n]().load() for n in OFFLINE]
    flow = make_flow()
    ocr = RapidOCR(params={"Global.use_cls": False, "Global.use_rec": False, "Global.log_level": "critical"})
    first = dict(list(sources.items())[:1])
    run_ours(first, scorers, flow)  # warm-up: models and caches loaded
    run_baseline(first, ocr)
    runs = interleave(args.repeats, {"ours": lambda: run_ours(sources, scorers, flow),  # alternating, so a load
                                     "base": lambda: run_baseline(sources, ocr)})  # change hits both
    ours_t, base_t = [len(rows) / t for t, _ in runs["ours"]], [len(rows) / t for t, _ in runs["base"]]
    ours, base = runs["ours"][-1][1], runs["base"][-1][1]
    ref = reference_motion(sources)
    df = pd.DataFrame({cid: {"motion": ours[cid]["motion"], "same_pairs": ref[cid],
                             "sampled": base[cid]["motion_farneback"], "truth": truth.get(cid, np.nan)}
                       for cid in ours}).T.astype(float)

    def rho(a: str, b: str) -> tuple[float, int]:
        d = df[[a, b]].dropna()
        return d[a].rank().corr(d[b].rank()), len(d)

    speedup = per_repeat(ours_t, base_t)
    print(f"{load_average()}; {len(rows)} clips from {len(sources)} sources ({len(rows) - len(truth)} real); "
          f"{repeats_note(args.repeats)}")
    print(f"ours (one decode at 256, DIS, all offline scorers): {spread(ours_t).text()} clips/s")
    print(f"baseline (a full-resolution decode per scorer, Farneback): {spread(base_t).text()} clips/s")
    print(f"speed-up: {speedup.text('{:.1f}', 'x')} (target >= 3x: {'PASS' if speedup.median >= 3 else 'FAIL'})")
    r, n = rho("motion", "same_pairs")
    print(f"Spearman(motion, full-resolution Farneback on the same frame pairs) over {n} clips: {r:.3f} "
          f"(target >= 0.9: {'PASS' if r >= 0.9 else 'FAIL'})")
    r, n = rho("motion", "sampled")
    print(f"Spearman(motion, the baseline's Farneback between 2-fps samples) over {n} clips: {r:.3f}")
    if truth:
        for col in ("motion", "same_pairs", "sampled"):
            r, n = rho(col, "truth")
            print(f"Spearman({col}, true camera motion) over the {n} synthetic clips: {r:.3f}")
    if args.aesthetic_model:
        rate = aesthetic_rate(sources, args.aesthetic_model, args.device, args.batch_size)
        print(f"aesthetic ({args.aesthetic_model}, {args.device}, batch {args.batch_size} frames): "
              f"{rate:.1f} clips/s (3 frames per clip, decode excluded)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
