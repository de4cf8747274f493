"""Every export format read back with what its target tool reads it with (datasets, pandas, tomllib), every
clip and caption checked; the clip options; re-runs that change nothing; stale files removed, others kept."""

from __future__ import annotations

import hashlib

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from index.manifest import read_manifest
from index.shards.build import ShardsError, build_shards
from index.shards.formats import WRITERS
from index.shards.names import aspect_name, ASPECTS
from index.shards.stage import ClipOptions
from index.video import iter_frames, read_frames
from test_shards_data import make_shards_dataset, scores  # noqa: F401  (scores: a fixture)

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from index.record import STAGE_COLUMNS
    from test_shards_data import SCORES

    added = [c for c in SCORES if c not in STAGE_COLUMNS]
    STAGE_COLUMNS.update({c: SCORES[c] for c in added})  # the scorer registers these (see test_shards_data)
    d = make_shards_dataset(tmp_path_factory.mktemp("formats-src"), shots=2, frames=16, with_scores=True)
    d["df"] = read_manifest(d["manifest"])
    yield d
    for c in added:
        STAGE_COLUMNS.pop(c, None)


def frames_of(path) -> np.ndarray:
    return np.stack([f.image for f in iter_frames(path)])


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".shotcap" not in p.parts}


def test_folder_loads_with_datasets_videofolder(data, tmp_path):
    import datasets

    rep = build_shards(data["df"], tmp_path / "f", dedup=False, fmt="folder")
    ds = datasets.load_dataset("videofolder", data_dir=str(tmp_path / "f"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    ds = ds.cast_column("video", datasets.Video(decode=False))  # decoding would need torchcodec: PyAV below
    assert len(ds) == len(data["df"]) == rep.samples
    by_id = data["df"].set_index("clip_id")
    for row in ds:
        src = by_id.loc[row["clip_id"]]
        path = Path(row["video"]["path"])
        assert row["caption"] == src["caption"] == (path.with_suffix(".txt")).read_text(encoding="utf-8")
        assert row["aesthetic"] == pytest.approx(src["aesthetic"]) and row["camera_motion"] == src["camera_motion"]
        assert len(frames_of(path)) == src["num_frames"] == row["num_frames"]


def test_finetrainers_two_file_and_csv_layouts(data, tmp_path):
    import datasets

    out = tmp_path / "ft"
    rep = build_shards(data["df"], out, dedup=False, fmt="finetrainers")
    prompts = (out / "prompt.txt").read_text(encoding="utf-8").splitlines()
    videos = (out / "videos.txt").read_text(encoding="utf-8").splitlines()
    assert len(prompts) == len(videos) == len(data["df"]) == rep.samples
    by_file = rep.index.set_index("file")
    for prompt, video in zip(prompts, videos):
        row = by_file.loc[video]
        assert prompt == row["caption"] and len(frames_of(out / video)) == row["num_frames"]
    csv = pd.read_csv(out / "metadata.csv")
    assert list(csv.columns) == ["file_name", "caption"] and list(csv["file_name"]) == videos
    ds = datasets.load_dataset("videofolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    ds = ds.cast_column("video", datasets.Video(decode=False))
    assert sorted(ds["caption"]) == sorted(prompts)


def test_clip_options_make_clips_fit_and_report_those_that_cannot(data, tmp_path):
    opts = ClipOptions(fps=16.0, frames_4k1=True, side_multiple=32)
    rep = build_shards(data["df"], tmp_path / "ft", dedup=False, fmt="finetrainers", clip_options=opts)
    assert rep.samples == len(data["df"]) and not rep.unfit
    original = frames_of(data["folder"] / "original.mp4")
    for row in rep.index.itertuples():
        path = tmp_path / "ft" / row.file
        frames, times = frames_of(path), [f.pts_sec for f in iter_frames(path)]
        assert len(frames) == row.clip_num_frames and (len(frames) - 1) % 4 == 0 and len(frames) >= 5
        assert frames.shape[2] % 32 == 0 and frames.shape[1] % 32 == 0
        assert np.diff(times) == pytest.approx(1 / 16, abs=1e-3)  # 16 fps
        if row.video_path.endswith("original.mp4"):  # frame k is the source frame nearest k / 16 s: not stretched
            step = row.fps / 16.0
            for k in (1, len(frames) - 1):
                want = original[row.start_frame + round(k * step)]
                near = [np.abs(frames[k].astype(int) - original[row.start_frame + round(k * step) + d].astype(int))
                        .mean() for d in (-1, 0, 1) if 0 <= row.start_frame + round(k * step) + d < len(original)]
                assert np.abs(frames[k].astype(int) - want.astype(int)).mean() == min(near)
    # a side multiple larger than a side, a rate above the source's: reported, never stretched
    rep = build_shards(data["df"], tmp_path / "big", dedup=False, fmt="finetrainers",
                       clip_options=ClipOptions(side_multiple=128))
    unfit = dict(rep.unfit)
    assert set(unfit) == set(data["df"]["clip_id"][data["df"]["height"] < 128])
    assert all("smaller than --side-multiple 128" in r for r in unfit.values())
    assert rep.samples == len(data["df"]) - len(unfit) and rep.dropped == {"unfit": len(unfit)}
    assert len((tmp_path / "big" / "videos.txt").read_text().splitlines()) == rep.samples
    rep = build_shards(data["df"], tmp_path / "fast", dedup=False, fmt="folder", clip_options=ClipOptions(fps=24.5))
    assert {c for c, _ in rep.unfit} == set(data["df"]["clip_id"][data["df"]["fps"] < 24.2])
    assert all("frames would be invented" in r for _, r in rep.unfit)


def test_musubi_and_diffusion_pipe_tomls_match_the_clips(data, tmp_path):
    rep = build_shards(data["df"], tmp_path / "m", dedup=False, fmt="musubi", clip_options=ClipOptions(frames_4k1=True))
    cfg = tomllib.loads((tmp_path / "m" / "musubi_dataset.toml").read_text())
    ds = cfg["datasets"][0]
    videos = Path(ds["video_directory"])
    assert videos == (tmp_path / "m" / "videos").resolve() and cfg["general"]["caption_extension"] == ".txt"
    mp4s = sorted(videos.glob("*.mp4"))
    assert len(mp4s) == rep.samples == len(data["df"])
    by_key = rep.index.set_index("key")
    for mp4 in mp4s:
        assert mp4.with_suffix(".txt").read_text(encoding="utf-8") == by_key.loc[mp4.stem, "caption"]
        assert len(frames_of(mp4)) == by_key.loc[mp4.stem, "clip_num_frames"]
    counts = rep.index["clip_num_frames"]
    assert all((t - 1) % 4 == 0 for t in ds["target_frames"]) and min(ds["target_frames"]) <= counts.min()
    assert max(ds["target_frames"]) <= counts.max() and ds["frame_extraction"] == "head"
    w, h = cfg["general"]["resolution"]
    common = rep.index.groupby(["clip_width", "clip_height"]).size().idxmax()
    assert (w, h) == (common[0] // 16 * 16, common[1] // 16 * 16)

    rep = build_shards(data["df"], tmp_path / "d", dedup=False, fmt="diffusion-pipe")
    cfg = tomllib.loads((tmp_path / "d" / "diffusion_pipe_dataset.toml").read_text())
    videos = Path(cfg["directory"][0]["path"])
    assert videos == (tmp_path / "d" / "videos").resolve()
    by_key = rep.index.set_index("key")
    assert sorted(p.stem for p in videos.glob("*.mp4")) == sorted(by_key.index)  # every clip, with its caption
    for key, row in by_key.iterrows():
        assert (videos / f"{key}.txt").read_text(encoding="utf-8") == row["caption"]
        assert len(frames_of(videos / f"{key}.mp4")) == row["num_frames"]
    assert cfg["enable_ar_bucket"] is True and cfg["frame_buckets"][0] == 1
    names = {aspect_name(w, h) for w, h in zip(rep.index["clip_width"], rep.index["clip_height"])}
    assert sorted(cfg["ar_buckets"]) == sorted(round(ASPECTS[n], 3) for n in names)
    for n in rep.index["clip_num_frames"]:  # every clip fills a frame bucket other than 1 (none is dropped)
        assert any(1 < b <= n for b in cfg["frame_buckets"])


def test_opensora_csv_describes_its_own_files(data, tmp_path):
    rep = build_shards(data["df"], tmp_path / "o", dedup=False, fmt="opensora-csv")
    csv = pd.read_csv(tmp_path / "o" / "opensora.csv")
    assert list(csv.columns) == ["path", "text", "num_frames", "height", "width", "aspect_ratio", "fps", "resolution"]
    assert len(csv) == rep.samples == len(data["df"])
    by_id = data["df"].set_index("clip_id")
    for r in csv.itertuples():
        frames = frames_of(r.path)
        assert Path(r.path).is_absolute() and r.text == by_id.loc[Path(r.path).stem, "caption"]
        assert (len(frames), frames.shape[1], frames.shape[2]) == (r.num_frames, r.height, r.width)
        assert r.aspect_ratio == pytest.approx(r.height / r.width, abs=1e-6) and r.resolution == r.height * r.width


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_a_rerun_changes_nothing_and_a_new_selection_removes_only_our_stale_files(data, tmp_path, fmt):
    out = tmp_path / fmt
    build_shards(data["df"], out, dedup=False, fmt=fmt)
    before = digest(out)
    rep = build_shards(data["df"], out, dedup=False, fmt=fmt)
    assert digest(out) == before and rep.samples == len(data["df"])
    user = out / (WRITERS[fmt].media or ".") / "my_notes.mp4"
    user.write_bytes(b"the user's")
    from index.shards.where import parse_where

    keep = parse_where("camera_motion == 'static'", data["df"])
    rep = build_shards(data["df"], out, dedup=False, fmt=fmt, where=keep)
    assert 0 < rep.samples < len(data["df"]) and user.read_bytes() == b"the user's"
    listed = set(rep.files) | {"index.parquet", "failed.jsonl"}
    media = [str(p.relative_to(out)) for p in out.rglob("*.mp4") if p != user] + [str(p.relative_to(out))
                                                                                     for p in out.glob("*.tar")]
    assert set(media) <= listed  # the clips of the first selection are gone
    assert len(rep.index) == rep.samples == int((data["df"]["camera_motion"] == "static").sum())


def test_an_output_folder_holds_one_format(data, tmp_path):
    build_shards(data["df"], tmp_path / "o", dedup=False, fmt="folder")
    with pytest.raises(ShardsError, match="holds a folder export"):
        build_shards(data["df"], tmp_path / "o", dedup=False, fmt="webdataset")
    with pytest.raises(ShardsError, match="other clip options"):
        build_shards(data["df"], tmp_path / "o", dedup=False, fmt="folder", clip_options=ClipOptions(fps=10.0))


def test_scores_travel_in_each_sample(data, tmp_path):
    import webdataset as wds

    build_shards(data["df"], tmp_path / "w", dedup=False)
    by_id = data["df"].set_index("clip_id")
    samples = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "w").glob("*.tar")), shardshuffle=False).decode())
    assert len(samples) == len(data["df"])
    for s in samples:
        row = by_id.loc[s["__key__"]]
        for col in ("aesthetic", "motion", "text_area", "camera_motion", "text_static"):
            assert s["json"][col] == (row[col].item() if hasattr(row[col], "item") else row[col]), col
    assert len(read_frames(samples[0]["mp4"], range(4))) == 4


@pytest.mark.parametrize("fmt", ["folder", "finetrainers"])
def test_a_killed_folder_export_resumes_to_the_same_files(data, tmp_path, fmt):
    out = tmp_path / fmt
    rep = build_shards(data["df"], out, dedup=False, fmt=fmt)
    listing = digest(out)
    lists = {f: (out / f).read_bytes() for f in WRITERS[fmt]().fixed_files()}
    # killed mid-way: a clip and the list files not yet written, a clip still staged, a temp file of ours left
    gone, staged = sorted((out / "videos").glob("*.mp4"))[:2]
    gone.unlink()
    gone.with_suffix(".txt").unlink(missing_ok=True)
    (out / ".staging").mkdir()
    staged.rename(out / ".staging" / staged.name)
    for f in lists:
        (out / f).unlink()
    (out / "videos" / f".{gone.name}.shotcap-7-0123abcd.tmp").write_bytes(b"half a clip")
    again = build_shards(data["df"], out, dedup=False, fmt=fmt)
    assert sorted(digest(out)) == sorted(listing) and again.samples == rep.samples
    assert {f: (out / f).read_bytes() for f in lists} == lists and not (out / ".staging").exists()
    assert len(frames_of(gone)) == rep.index.set_index("file").loc[f"videos/{gone.name}", "num_frames"]
