"""review-clips: how the page scales, how fast previews are made, and the README's screenshot.

    python bench/review_page.py                                  # 10,000 clips; writes docs/review.png
    python bench/review_page.py --clips 2000 --screenshot ""     # a quicker try, no screenshot

1. Demo data through the real commands: synthetic videos (one also re-encoded at twice the size: near duplicates),
   split-videos --detector content, a caption naming each shot's shape colour and speed, score-clips (motion,
   camera motion, sharpness, brightness, text, bpp), index-clips and build-shards --index. Then review-clips with previews: previews per second and bytes per preview, and a
   screenshot of the page with a threshold set (a PNG quantised to at most 150 KB) for the README.
2. A synthetic index.parquet of --clips rows (no previews) and of --clips / 10 rows (the baseline), each through
   review-clips --no-previews and opened in headless Chromium (Debian's, driven by Playwright): the time to a
   ready page and to apply a threshold, and their ratio to the baseline's (10x the clips). Each page is opened
   --repeats times, the two alternating; times are the median and spread (min-max), ratios taken per repeat.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _stats import interleave, load_average, per_repeat, repeats_note, spread  # noqa: E402
from index.manifest import read_manifest, write_manifest  # noqa: E402
from index.shards.review import main as review_main  # noqa: E402
from index.synth import COLOURS, ShotSpec, render  # noqa: E402
from index.video import write_video  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def demo_data(root: Path) -> Path:
    """Shards (with SHARDS/index) of captioned, scored synthetic clips; returns the shards folder."""
    from index.dedup.cli import index_main
    from index.shards.cli import shards_main
    from scorer.cli import main as score_main
    from splitter.cli import main as split_main

    raw = root / "raw"
    raw.mkdir(parents=True)
    colours, shots = list(COLOURS), {}
    for v in range(4):
        specs = [ShotSpec(50, seed=10 * v + k, motion="fast" if (v + k) % 3 == 0 else "normal",
                          shape_colour=colours[(3 * v + k) % len(colours)]) for k in range(4)]
        frames, truth = render(specs, size=(320, 180))
        write_video(raw / f"walk_{v}.mp4", frames, 25.0)
        shots[f"walk_{v}.mp4"] = list(zip(truth.shots, specs))
        if v == 0:  # the same video at twice the size: index-clips groups its clips with these
            write_video(raw / "walk_0_hd.mp4", np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2), 25.0)
            shots["walk_0_hd.mp4"] = shots["walk_0.mp4"]
    assert split_main([str(raw), "-o", str(root / "split"), "--detector", "content", "--min-sec", "1",
                       "--no-progress"]) == 0
    df = read_manifest(root / "split" / "clips.parquet")
    captions = []
    for r in df.itertuples():
        (_, spec) = next(s for s in shots[Path(r.video_path).name] if s[0][0] <= r.start_frame < s[0][1])
        captions.append(f"a {spec.shape_colour} square {'darts' if spec.motion == 'fast' else 'drifts'} across "
                        f"a softly coloured, textured background")
    df["caption"] = captions
    df["caption_flags"] = ["too_short" if i % 7 == 3 else "" for i in range(len(df))]
    write_manifest(df, root / "captioned.parquet")
    assert score_main([str(root / "captioned.parquet"), "-o", str(root / "scored"), "--quiet"]) == 0
    scored = root / "scored" / "clips.parquet"
    shards = root / "shards"
    assert index_main([str(scored), "-o", str(shards / "index")]) == 0
    assert shards_main([str(scored), "-o", str(shards), "--index", str(shards / "index"),
                        "--allow-flags", "all"]) == 0
    return shards


def big_index(folder: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    start = np.round(rng.uniform(0, 600, n), 3)
    df = pd.DataFrame({
        "clip_id": [f"{k:020x}" for k in range(n)], "key": [f"{k:020x}" for k in range(n)],
        "shard": [f"360p_16x9_f033-064-{k // 500:05d}.tar" for k in range(n)], "bucket": "360p_16x9_f033-064",
        "video_path": [f"/data/raw/video_{k % 700:04d}.mp4" for k in range(n)], "start_sec": start,
        "end_sec": start + np.round(rng.uniform(2, 12, n), 3), "num_frames": rng.integers(50, 300, n), "fps": 25.0,
        "width": 640, "height": 360, "caption": [f"clip {k}: a car drives along a coastal road" for k in range(n)],
        "caption_flags": ["too_short" if k % 11 == 0 else "" for k in range(n)],
        "motion": rng.uniform(0, 1, n).round(3), "aesthetic": rng.normal(5, 1, n).round(3),
        "nsfw": rng.uniform(0, 1, n).round(3), "camera_motion": rng.choice(["static", "pan_left", "zoom_in"], n)})
    folder.mkdir(parents=True)
    df.to_parquet(folder / "index.parquet")
    return folder


def page_times(browser, page_path: Path) -> tuple[float, float, int]:
    """(seconds to a ready page, milliseconds to apply a threshold, clips shown after it)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    t0 = time.perf_counter()
    page.goto(page_path.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    ready = time.perf_counter() - t0
    ms = page.evaluate("""() => {
        const box = document.querySelector('.thr[data-col="aesthetic"] .lo-num');
        const t = performance.now();
        box.value = '5.5';
        box.dispatchEvent(new Event('input'));
        return performance.now() - t;
    }""")
    shown = int(page.inner_text("#shown-count"))
    page.close()
    return ready, ms, shown


def screenshot(browser, page_path: Path, threshold: float, dst: Path, limit: int = 150_000) -> int:
    """The clips tab with a motion threshold set, as a PNG of at most `limit` bytes."""
    from PIL import Image

    page = browser.new_page(viewport={"width": 1240, "height": 780})
    page.goto(page_path.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    page.fill('.thr[data-col="motion"] .lo-num', str(threshold))
    page.wait_for_function("() => [...document.querySelectorAll('#grid img')].slice(0, 12)"
                           ".every(i => i.complete && i.naturalWidth)")
    png = page.screenshot()
    page.close()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    for colours in (128, 96, 64, 48, 32):
        buf = io.BytesIO()
        image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
        if buf.tell() <= limit:
            break
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(buf.getvalue())
    return buf.tell()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--clips", type=int, default=10_000, help="rows of the large synthetic index")
    ap.add_argument("--screenshot", default=str(ROOT / "docs" / "review.png"), help="PNG to write ('' for none)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--repeats", type=int, default=3, help="times each page is opened, alternating")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        tmp = Path(tmp)
        browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
        shards = demo_data(tmp / "demo")
        here = os.getcwd()
        os.chdir(shards.parent)  # relative paths: the page (and the screenshot) shows no temporary folder
        t0 = time.perf_counter()
        assert review_main([shards.name, "-o", str(tmp / "review"), "--title", "review: demo shards"]) == 0
        took = time.perf_counter() - t0
        os.chdir(here)
        previews = list((tmp / "review" / "previews").glob("*.webp"))
        sizes = [f.stat().st_size for f in previews]
        print(f"previews: {len(previews)} in {took:.2f} s ({len(previews) / took:.1f} clips/s, page included), "
              f"{np.mean(sizes) / 1024:.1f} KB mean, {max(sizes) / 1024:.1f} KB max")
        if args.screenshot:
            median = float(pd.read_parquet(shards / "index.parquet")["motion"].median().round(3))
            size = screenshot(browser, tmp / "review" / "index.html", median, Path(args.screenshot))
            print(f"screenshot: {args.screenshot} ({size / 1024:.0f} KB)")
        pages = {}
        for n in (max(10, args.clips // 10), args.clips):
            folder = big_index(tmp / f"big{n}", n)
            t0 = time.perf_counter()
            assert review_main([str(folder), "-o", str(tmp / f"page{n}"), "--no-previews"]) == 0
            write = time.perf_counter() - t0
            size = (tmp / f"page{n}" / "data.js").stat().st_size / 1e6
            pages[n] = (write, size)
        opened = interleave(args.repeats, {n: (lambda n=n: page_times(browser, tmp / f"page{n}" / "index.html"))
                                           for n in pages})
        browser.close()
    print(f"\n{load_average()}; page ready and threshold: {repeats_note(args.repeats)}")
    print("| clips | review-clips --no-previews s | data.js MB | page ready s | threshold ms | shown |")
    print("|---|---|---|---|---|---|")
    ready = {n: [r for r, _, _ in rs] for n, rs in opened.items()}
    ms = {n: [max(m, 1e-3) for _, m, _ in rs] for n, rs in opened.items()}
    for n, (write, size) in pages.items():
        shown = {s for _, _, s in opened[n]}
        print(f"| {n:,} | {write:.2f} | {size:.1f} | {spread(ready[n]).text()} | {spread(ms[n]).text('{:.1f}')} | "
              f"{', '.join(f'{s:,}' for s in sorted(shown))} |")
    b, n = pages
    print(f"\n{n:,} clips against {b:,} (the baseline, 10x fewer): page ready "
          f"{per_repeat(ready[n], ready[b]).text('{:.2f}', 'x')}, "
          f"threshold {per_repeat(ms[n], ms[b]).text('{:.2f}', 'x')} the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
