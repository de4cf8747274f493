"""review-clips: the page's data, previews (right content, size budget, resume), inputs, errors, and the page itself
in a real headless Chromium (tiles, filters, sort, duplicates, failures, 10,000 clips)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from index.files import OutputLock
from index.manifest import read_manifest, write_manifest
from index.shards.review import encode_webp, main
from index.synth import ShotSpec, render
from index.video import read_frames, write_video

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red square drifts over a green field", "a blue shape moves slowly", "camera pans across a pattern",
            "<b>bold</b> & <script>x</script>", "a yellow block crosses a purple texture", "a cyan square bounces"]


def build_fixture(root: Path) -> dict:
    """Three synthetic videos (one a 2x re-encode of another: near duplicates) through split-videos, a caption
    and two score columns set in the manifest, index-clips into SHARDS/index, and build-shards with that index."""
    from index.dedup.cli import index_main
    from index.shards.cli import shards_main
    from splitter.cli import main as split_main

    raw = root / "raw"
    raw.mkdir(parents=True)
    frames, _ = render([ShotSpec(40, seed=s) for s in (1, 2, 3)], size=(160, 96))
    write_video(raw / "a.mp4", frames, 25.0)
    write_video(raw / "a_big.mp4", np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2), 25.0)
    write_video(raw / "b.mp4", render([ShotSpec(40, seed=s) for s in (7, 8)], size=(160, 96))[0], 25.0)
    assert split_main([str(raw), "-o", str(root / "split"), "--detector", "content", "--min-sec", "1",
                       "--no-progress"]) == 0
    df = read_manifest(root / "split" / "clips.parquet")
    df["caption"] = [f"clip {i}: {CAPTIONS[i % len(CAPTIONS)]}" for i in range(len(df))]
    df.loc[len(df) - 1, "caption"] = ""  # no caption: build-shards records a failure
    df["caption_flags"] = ["too_short" if i % 3 == 0 else "" for i in range(len(df))]
    df["score_aesthetic"] = np.round(np.linspace(3.0, 6.5, len(df)), 3)
    df["score_motion"] = np.round(np.random.default_rng(0).uniform(0, 1, len(df)), 3)
    write_manifest(df, root / "captioned.parquet")
    shards = root / "shards"
    assert index_main([str(root / "captioned.parquet"), "-o", str(shards / "index")]) == 0
    assert shards_main([str(root / "captioned.parquet"), "-o", str(shards), "--index", str(shards / "index"),
                        "--shard-size", "200KB", "--allow-flags", "all"]) == 0  # the flags are for the page to show
    return {"root": root, "raw": raw, "manifest": root / "captioned.parquet", "shards": shards}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data = build_fixture(tmp_path_factory.mktemp("review-src"))
    out = data["root"] / "review"
    assert main([str(data["shards"]), "-o", str(out)]) == 0
    return {**data, "out": out}


def read_data(out: Path) -> dict:
    text = (out / "data.js").read_text(encoding="utf-8")
    assert text.startswith("window.REVIEW = ") and text.endswith(";\n")
    return json.loads(text[len("window.REVIEW = "):-2])


def webp_frames(path: Path) -> list[np.ndarray]:
    im = Image.open(path)
    out = []
    for k in range(getattr(im, "n_frames", 1)):
        im.seek(k)
        out.append(np.asarray(im.convert("RGB")))
    return out


# ---------------------------------------------------------------- data and previews

def test_page_data_from_shards_and_index(built):
    d = read_data(built["out"])
    dedup = pd.read_parquet(built["shards"] / "index" / "clips.parquet")
    index = pd.read_parquet(built["shards"] / "index.parquet").merge(dedup[["clip_id", "dup_group"]], on="clip_id")
    in_set = [i for i in range(d["n"]) if not d["dropped"][i]]
    assert sorted(d["id"][i] for i in in_set) == sorted(index["clip_id"])
    # the dropped members of the groups on the page come from the index, beside the clip kept
    dropped = dedup[~dedup["keep"] & dedup["dup_group"].isin(index["dup_group"])]
    assert len(dropped) > 0
    assert sorted(d["id"][i] for i in range(d["n"]) if d["dropped"][i]) == sorted(dropped["clip_id"])
    for g in set(dropped["dup_group"]):
        members = [i for i in range(d["n"]) if d["dup"][i] == g]
        assert len(members) >= 2 and sum(d["keep"][i] for i in members) == 1
    by_id = index.set_index("clip_id")
    for i in in_set:
        row = by_id.loc[d["id"][i]]
        assert d["caption"][i] == row["caption"] and d["shard"][i] == row["shard"]
        assert d["num"]["score_aesthetic"][i] == pytest.approx(row["score_aesthetic"])
        assert ("too_short" in d["flags"][i].split(",")) == (row["caption_flags"] == "too_short")
    assert [c["name"] for c in d["numeric"]][:3] == ["score_aesthetic", "score_motion", "duration"]
    assert any("no caption" in f["reason"] for f in d["failures"])  # build-shards' failed.jsonl
    assert all(d["pv"][i] for i in range(d["n"])), "every clip, kept or dropped, has a preview"


def test_previews_show_their_own_clip_within_budget(built):
    d = read_data(built["out"])
    clips = read_manifest(built["manifest"]).set_index("clip_id")
    first = {}  # clip id -> its first preview frame's source frame, decoded from the source video at 96x160
    for i in range(d["n"]):
        path = built["out"] / "previews" / f"{d['pv'][i]}.webp"
        assert path.stat().st_size <= 50 * 1024
        frames = webp_frames(path)
        assert len(frames) >= 8 and max(frames[0].shape[:2]) == 192  # animated, fits the 192 px box
        r = clips.loc[d["id"][i]]
        src = read_frames(r["video_path"], [int(r["start_frame"])], size=(160, 96))[0]
        first[d["id"][i]] = (np.asarray(Image.fromarray(frames[0]).resize((160, 96))).astype(int), src.astype(int))
    for cid, (pv, _) in first.items():  # the preview's first frame is its own clip's (or its twin's) first frame
        errs = {other: np.abs(pv - src).mean() for other, (_, src) in first.items()}
        assert errs[cid] < 12 and errs[cid] <= min(errs.values()) + 2, errs


def test_rerun_makes_only_missing_previews(built, tmp_path):
    out = tmp_path / "review"
    shutil.copytree(built["out"], out)
    previews = sorted((out / "previews").glob("*.webp"))
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in previews}
    data_js = (out / "data.js").read_bytes()
    previews[0].unlink()
    leftover = out / "previews" / ".x.webp.shotcap-123-0123abcd.tmp"  # a killed run's temp file
    leftover.write_bytes(b"partial")
    assert main([str(built["shards"]), "-o", str(out)]) == 0
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "previews").glob("*.webp")}
    assert set(after) == set(before) and not leftover.exists()
    assert [n for n in after if after[n] != before[n]] == [previews[0].name]
    assert (out / "data.js").read_bytes() == data_js
    # other preview options: the old previews are replaced, not mixed in
    assert main([str(built["shards"]), "-o", str(out), "--preview-px", "96"]) == 0
    assert all(max(webp_frames(p)[0].shape[:2]) == 96 for p in (out / "previews").glob("*.webp"))


def test_offsets_in_the_index_are_where_the_clip_is_read(built, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(built["shards"], shards)
    index = pd.read_parquet(shards / "index.parquet")
    members = {}
    for tar_path in shards.glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            members.update({m.name[:-4]: (m.offset_data, m.size) for m in tar.getmembers() if m.name.endswith(".mp4")})
    shard = index["shard"].value_counts().index[0]
    a, b = index.loc[index["shard"] == shard, "key"].tolist()[:2]  # two clips of one shard
    index["offset"] = [members[k][0] for k in index["key"]]
    index["size"] = [members[k][1] for k in index["key"]]
    swapped = index.copy()
    ia, ib = swapped.index[swapped["key"] == a][0], swapped.index[swapped["key"] == b][0]
    swapped.loc[[ia, ib], ["offset", "size"]] = swapped.loc[[ib, ia], ["offset", "size"]].to_numpy()
    swapped.to_parquet(shards / "index.parquet")
    assert main([str(shards), "-o", str(tmp_path / "r1"), "--index", str(built["shards"] / "index")]) == 0
    right = built["out"] / "previews"
    got = tmp_path / "r1" / "previews"
    assert (got / f"{a}.webp").read_bytes() == (right / f"{b}.webp").read_bytes()  # read where the index says
    # offsets of the member headers (another convention) are recognised and the tar is read instead
    index["offset"] = index["offset"] - 512
    index.to_parquet(shards / "index.parquet")
    assert main([str(shards), "-o", str(tmp_path / "r2")]) == 0
    for k in index["key"]:
        assert (tmp_path / "r2" / "previews" / f"{k}.webp").read_bytes() == (right / f"{k}.webp").read_bytes()


def test_a_broken_shard_is_recorded_not_a_crash(built, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    shutil.copy(built["shards"] / "index.parquet", shards)
    for tar in built["shards"].glob("*.tar"):
        (shards / tar.name).write_bytes(tar.read_bytes()[:3000])  # cut inside the first member
    assert main([str(shards), "-o", str(tmp_path / "r")]) == 0
    failed = [json.loads(x) for x in (tmp_path / "r" / "failed.jsonl").read_text().splitlines()]
    # each clip cut off is recorded (read by its offset: its bytes are not a readable video), none is a crash
    assert len(failed) >= len(list(shards.glob("*.tar"))) and all("not a readable" in f["reason"] for f in failed)
    d = read_data(tmp_path / "r")
    assert not all(d["pv"]) and all("not a readable" in e for e, pv in zip(d["perr"], d["pv"]) if not pv)


def test_manifest_input_missing_source_and_missing_columns(built, tmp_path):
    df = read_manifest(built["manifest"])
    gone = tmp_path / "gone.mp4"
    shutil.copy(built["raw"] / "b.mp4", gone)
    df.loc[df["video_path"].str.endswith("b.mp4"), "video_path"] = str(gone)
    df["keep"] = [i != 0 for i in range(len(df))]
    df["dup_group"] = [0 if i in (0, 1) else -1 for i in range(len(df))]
    write_manifest(df, tmp_path / "m" / "clips.parquet")
    gone.unlink()
    assert main([str(tmp_path / "m"), "-o", str(tmp_path / "r")]) == 0
    d = read_data(tmp_path / "r")
    assert d["kind"] == "manifest" and d["n"] == len(df) and d["dropped"] == [i == 0 for i in range(len(df))]
    missing = [i for i in range(d["n"]) if d["src"][i] == str(gone)]
    assert missing and all(not d["pv"][i] and "file not found" in d["perr"][i] for i in missing)
    assert all(d["pv"][i] for i in range(d["n"]) if i not in missing)
    failed = [json.loads(x) for x in (tmp_path / "r" / "failed.jsonl").read_text().splitlines()]
    assert len(failed) == 1 and failed[0]["path"] == str(gone) and "file not found" in failed[0]["reason"]
    # a bare manifest: clip ids and paths only, as CSV
    pd.DataFrame({"clip_id": ["x1", "x2"], "video_path": ["nowhere.mp4", "nowhere.mp4"]}).to_csv(
        tmp_path / "bare.csv", index=False)
    assert main([str(tmp_path / "bare.csv"), "-o", str(tmp_path / "r2")]) == 0
    d = read_data(tmp_path / "r2")
    assert d["id"] == ["x1", "x2"] and d["numeric"] == [] and d["perr"][0].startswith("no source")


def test_webp_fits_its_budget_even_for_noise():
    noise = np.random.default_rng(0).integers(0, 256, (16, 108, 192, 3), dtype=np.uint8)
    data = encode_webp(noise, 8.0, 50 * 1024)
    assert len(data) <= 50 * 1024
    assert Image.open(io.BytesIO(data)).n_frames >= 2


def test_usage_errors_are_one_line_exit_2(built, tmp_path, capsys):
    cases = [[str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")],
             [str(built["raw"]), "-o", str(tmp_path / "o")],  # a folder of videos, not shards or a manifest
             [str(built["shards"]), "-o", str(tmp_path / "o"), "--index", str(built["raw"])],
             [str(built["shards"]), "-o", str(tmp_path / "o"), "--preview-kb", "0"],
             [str(built["shards"]), "-o", str(built["manifest"])],  # a file
             [str(built["shards"]), "-o", str(built["shards"])]]  # the input folder: its failed.jsonl is not ours
    for argv in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("review-clips: error: ") and "\n" not in err, err
    assert not (tmp_path / "o").exists()  # checked before any work
    with OutputLock(tmp_path / "locked", "another run"):
        assert main([str(built["shards"]), "-o", str(tmp_path / "locked"), "--no-previews"]) == 2
    assert "in use by another run (another run" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "-m", "index.shards.review", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "(default: 48)" in r.stdout and "(default: 50)" in r.stdout


def test_ctrl_c_is_one_line_exit_130_and_keeps_previews(tmp_path):
    frames, _ = render([ShotSpec(400, seed=3)], size=(320, 192))
    write_video(tmp_path / "long.mp4", frames, 25.0)
    rows = [{"clip_id": f"c{k:03d}", "video_path": str(tmp_path / "long.mp4"), "start_frame": 5 * k,
             "end_frame": 5 * k + 5, "start_sec": k / 5, "end_sec": (k + 1) / 5, "fps": 25.0, "width": 320,
             "height": 192, "num_frames": 5} for k in range(80)]
    pd.DataFrame(rows).to_parquet(tmp_path / "clips.parquet")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "index.shards.review", str(tmp_path / "clips.parquet"), "-o",
                             str(tmp_path / "r"), "--preview-frames", "5"], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((tmp_path / "r" / "previews").glob("*.webp")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    made = len(list((tmp_path / "r" / "previews").glob("*.webp")))
    assert proc.returncode == 130 and 0 < made < 80, (proc.returncode, made, err)
    lines = err.strip().splitlines()
    assert lines[-1].startswith("review-clips: interrupted:") and "previews made so far are kept" in lines[-1]
    assert not list((tmp_path / "r" / "previews").glob(".*.tmp"))


# ---------------------------------------------------------------- in a real browser (headless Chromium)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # Playwright adds --headless and a fresh --user-data-dir


@pytest.fixture(scope="module")
def browser():
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if exe is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium), so the review page is not opened "
                    "in a browser")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, out: Path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto((out / "index.html").as_uri())
    page.wait_for_selector("body[data-ready='1']")
    return page, errors


def shown(page) -> int:
    return int(page.inner_text("#shown-count"))


def tile_ids(page, where: str = "#grid", tiles: str = ".tile") -> list[str]:
    return page.eval_on_selector_all(f"{where} {tiles}", "ts => ts.map(t => t.dataset.id)")


def between(values, q: float) -> float:
    """A threshold at about quantile q of the distinct values, halfway between two of them: none sits on it."""
    v = np.unique(np.asarray(values, float)[~np.isnan(np.asarray(values, float))])
    k = int(q * (len(v) - 2))
    return float(np.round((v[k] + v[k + 1]) / 2, 4))


def test_page_in_a_browser(built, browser, tmp_path):
    dedup = pd.read_parquet(built["shards"] / "index" / "clips.parquet")
    index = pd.read_parquet(built["shards"] / "index.parquet").merge(dedup[["clip_id", "dup_group"]], on="clip_id")
    page, errors = open_page(browser, built["out"])
    assert shown(page) == len(index) and sorted(tile_ids(page)) == sorted(index["clip_id"])
    page.wait_for_function("() => [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth)")
    assert page.locator("#grid img").count() == len(index)
    assert page.locator(".cap", has_text="<script>x</script>").count() >= 1 and page.locator(".cap b").count() == 0
    # a threshold: the count, the tiles and the pandas query follow it
    t = between(index["score_aesthetic"], 0.4)
    page.fill('.thr[data-col="score_aesthetic"] .lo-num', str(t))
    want = index[index["score_aesthetic"] >= t]
    assert shown(page) == len(want) < len(index) and sorted(tile_ids(page)) == sorted(want["clip_id"])
    assert f"alone: {len(want)} clips" in page.inner_text('.thr[data-col="score_aesthetic"] .remain')
    assert page.inner_text("#query") == f"score_aesthetic >= {t}"
    page.select_option("#sort", "score_motion")  # descending first
    assert tile_ids(page) == want.sort_values("score_motion", ascending=False)["clip_id"].tolist()
    page.select_option('#flags select[data-flag="too_short"]', "no")
    assert shown(page) == int((want["caption_flags"] != "too_short").sum())
    page.click("#reset")
    assert shown(page) == len(index)
    page.check("#show-dropped")
    assert shown(page) == len(index) + int((~dedup["keep"] & dedup["dup_group"].isin(index["dup_group"])).sum())
    page.uncheck("#show-dropped")
    page.screenshot(path=str(tmp_path / "clips.png"))
    assert (tmp_path / "clips.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # duplicate groups side by side, the kept one marked
    page.click("#tab-dups")
    groups = dedup[dedup["dup_group"].isin(index["dup_group"]) & (dedup["dup_group"] >= 0)].groupby("dup_group")
    assert page.locator(".group").count() == groups.ngroups > 0
    for g, rows in groups:
        box = f'.group[data-group="{g}"]'
        assert sorted(tile_ids(page, box)) == sorted(rows["clip_id"])
        assert tile_ids(page, box, ".tile.kept") == rows.loc[rows["keep"], "clip_id"].tolist()
    page.wait_for_function("() => [...document.querySelectorAll('#groups img')]"
                           ".every(i => i.complete && i.naturalWidth)")
    # failures with their reasons
    page.click("#tab-fails")
    failed = [json.loads(x) for x in (built["shards"] / "failed.jsonl").read_text().splitlines()]
    assert page.locator("#fail-table tbody tr").count() == len(failed) > 0
    assert "no caption" in page.inner_text("#fail-table")
    assert errors == []


def test_page_at_10000_clips(browser, tmp_path):
    n, rng = 10_000, np.random.default_rng(1)
    start = np.round(rng.uniform(0, 600, n), 3)
    df = pd.DataFrame({
        "clip_id": [f"{k:020x}" for k in range(n)], "key": [f"{k:020x}" for k in range(n)],
        "shard": [f"360p_16x9_f033-064-{k // 500:05d}.tar" for k in range(n)], "bucket": "360p_16x9_f033-064",
        "video_path": [f"/data/raw/video_{k % 700:04d}.mp4" for k in range(n)], "start_sec": start,
        "end_sec": start + np.round(rng.uniform(2, 12, n), 3), "num_frames": rng.integers(50, 300, n),
        "fps": 25.0, "width": 640, "height": 360,
        "caption": [("a zebra " if k % 7 == 0 else "a car ") + "drives along a road" for k in range(n)],
        "caption_flags": ["too_short" if k % 11 == 0 else "" for k in range(n)],
        "motion": np.round(rng.uniform(0, 1, n), 3), "aesthetic": np.round(rng.normal(5, 1, n), 3),
        "nsfw": np.round(rng.uniform(0, 1, n), 3),
        "camera_motion": rng.choice(["static", "pan_left", "pan_right", "zoom_in"], n),
        "text_static": rng.random(n) < 0.2})
    df.loc[rng.choice(n, 500, replace=False), "aesthetic"] = np.nan  # not scored: fails any threshold on it
    (tmp_path / "shards").mkdir()
    df.to_parquet(tmp_path / "shards" / "index.parquet")
    assert main([str(tmp_path / "shards"), "-o", str(tmp_path / "r"), "--no-previews"]) == 0
    page, errors = open_page(browser, tmp_path / "r")
    assert shown(page) == n and len(tile_ids(page)) == 48 and "page 1 of 209" in page.inner_text(".pager .where")
    ta, tm = between(df["aesthetic"], 0.3), between(df["motion"], 0.7)
    page.fill('.thr[data-col="aesthetic"] .lo-num', str(ta))
    page.fill('.thr[data-col="motion"] .hi-num', str(tm))
    page.select_option('#cats select[data-cat="camera_motion"]', "static")
    page.select_option('#flags select[data-flag="text_static"]', "yes")
    base = df[(df["camera_motion"] == "static") & df["text_static"]]
    want = base[(base["aesthetic"] >= ta) & (base["motion"] <= tm)]
    assert shown(page) == len(want) > 48
    alone = int((base["aesthetic"] >= ta).sum())
    assert f"alone: {alone} clips" in page.inner_text('.thr[data-col="aesthetic"] .remain')
    page.fill("#search", "zebra")
    want = want[want["caption"].str.contains("zebra")]
    assert shown(page) == len(want) > 0
    page.fill("#search", "")
    page.select_option("#page-size", "24")
    want = base[(base["aesthetic"] >= ta) & (base["motion"] <= tm)]
    pages = -(-len(want) // 24)
    for _ in range(pages - 1):
        page.click(".pager .next >> nth=0")
    assert sorted(tile_ids(page)) == sorted(want["clip_id"].iloc[(pages - 1) * 24:])  # input order: the last ones
    assert page.locator(".pager .next >> nth=0").is_disabled()
    assert errors == []


def test_a_large_input_is_sampled_the_same_way_every_run(built, tmp_path, capsys):
    index = pd.read_parquet(built["shards"] / "index.parquet")
    runs = []
    for k in range(2):
        assert main([str(built["shards"]), "-o", str(tmp_path / f"r{k}"), "--no-previews", "--sample", "3"]) == 0
        d = read_data(tmp_path / f"r{k}")
        runs.append([d["id"][i] for i in range(d["n"]) if not d["extra"][i]])
        assert f"a sample of 3 of the input's {len(index)} rows" in capsys.readouterr().err
        assert d["input_rows"] == len(index) > 3
    assert runs[0] == runs[1] and len(runs[0]) == 3
    order = list(index["clip_id"])
    assert runs[0] == sorted(runs[0], key=order.index)  # shown in input order


def test_shards_on_a_bucket_give_the_same_page_and_previews(built, s3, tmp_path):
    from index import storage

    remote = f"{s3}/shards"
    for p in [built["shards"] / "index.parquet", built["shards"] / "failed.jsonl", *built["shards"].glob("*.tar")]:
        storage.write_bytes(f"{remote}/{p.name}", p.read_bytes())
    assert main([remote, "-o", str(tmp_path / "r"), "--index", str(built["shards"] / "index")]) == 0
    mine, theirs = read_data(built["out"]), read_data(tmp_path / "r")
    for key in ("id", "caption", "shard", "dup", "keep", "dropped", "num"):
        assert mine[key] == theirs[key], key
    got = sorted(p.name for p in (tmp_path / "r" / "previews").glob("*.webp"))
    assert got == sorted(p.name for p in (built["out"] / "previews").glob("*.webp")) and got
    for name in got:  # decoded from the members read off the bucket: the same frames
        a, b = webp_frames(built["out"] / "previews" / name), webp_frames(tmp_path / "r" / "previews" / name)
        assert len(a) == len(b) and np.abs(a[0].astype(int) - b[0].astype(int)).mean() < 1
