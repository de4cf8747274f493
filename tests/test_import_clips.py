"""`import-clips`: each published layout, built small against synthetic videos, becomes the rows split-videos writes.

Frame ranges are checked against each video's own PTS (a VFR file, a file whose first frame is at 3 s, a 29.97 fps
file with millisecond timestamps), display sizes against rotation and non-square pixels, and every kind of bad
metadata against failed.jsonl; re-runs, added videos, a bucket, caption-videos and build-shards' filter and its
Open-Sora CSV round trip complete the picture.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hostile
from index import synth
from index.files import file_sha256
from index.manifest import read_failed, read_manifest
from index.record import CORE_COLUMNS, make_clip_id
from index.video import iter_frames, probe
from splitter.imports import import_clips, main

NTSC = 30000 / 1001


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """a.mp4 (25 fps, cut at 2 s), ntsc.mp4 (29.97 fps), vfr.mkv (25 then 10 fps), late.mkv (first frame at 3 s),
    rot.mp4 (shown portrait), sar.mp4 (2:1 pixels), c.mov (found by id with another extension)."""
    d = tmp_path_factory.mktemp("videos")
    synth.make_video(d / "a.mp4", [50, 50], size=(64, 48))
    synth.make_video(d / "ntsc.mp4", [60, 60], size=(64, 48), fps=NTSC)
    hostile.variable_frame_rate(d / "vfr.mkv")
    hostile.first_pts_nonzero(d / "late.mkv")
    hostile.rotated(d / "rot.mp4")
    hostile.non_square_pixels(d / "sar.mp4")
    synth.make_video(d / "c.mov", [40], size=(48, 32))
    return d


def pts(path) -> np.ndarray:
    return np.array([f.pts_sec for f in iter_frames(path, size=(8, 8))])


def frames_between(path, t0: float, t1: float) -> tuple[int, int]:
    """The frames whose PTS lie in [t0, t1) (times given to the millisecond): what a span means."""
    idx = np.flatnonzero((pts(path) >= t0 - 5e-4) & (pts(path) < t1 - 5e-4))
    return int(idx[0]), int(idx[-1]) + 1


def hms(t: float) -> str:
    h, rest = divmod(t, 3600)
    m, s = divmod(rest, 60)
    return f"{int(h)}:{int(m):02d}:{s:06.3f}"


def panda_csv(path: Path, rows: list[tuple], extra: str = "") -> Path:
    """rows: (videoID, [(start, end) or raw string pairs], [captions], [scores])."""
    lines = ["videoID,url,timestamp,caption,matching_score" + extra]
    for vid, spans, caps, scores, *more in rows:
        stamps = [[hms(a), hms(b)] if not isinstance(a, str) else [a, b] for a, b in spans]
        cells = [vid, f"https://www.youtube.com/watch?v={vid}", str(stamps), str(caps), str(scores), *more]
        lines.append(",".join('"' + str(c).replace('"', '""') + '"' for c in cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def run(*args) -> int:
    return main([*map(str, args), "--no-progress"])


SPANS = {  # video -> spans (seconds), each on an exact frame time rounded to the millisecond
    "a": [(0.0, 2.0), (2.0, 4.0)],
    "ntsc": [(10 * 1001 / 30000, 97 * 1001 / 30000)],  # 0:00:00.334 - 0:00:03.237
    "vfr": [(0.4, 2.62), (2.62, 3.92)],  # the second at 10 fps: frames 64..77, not 2.62 * 25
    "late": [(1.0, 2.0)],  # seconds from the first frame (PTS 3 s)
    "rot": [(0.0, 2.0)],
    "sar": [(1.0, 3.0)],
}


def cap(vid: str, k: int) -> str:
    """A caption with what a CSV cell of Python lists must carry through: an apostrophe, quotes, a comma."""
    return f"{vid}'s \"caption\", number {k}"


@pytest.fixture(scope="module")
def panda(videos, tmp_path_factory):
    d = tmp_path_factory.mktemp("panda")
    rows = [(vid, spans, [cap(vid, k) for k in range(len(spans))], [0.3 + 0.1 * k for k in range(len(spans))])
            for vid, spans in SPANS.items()]
    csv = panda_csv(d / "panda.csv", rows)
    summary: dict = {}
    import_clips("panda70m", csv, d / "out", videos=videos, progress=False, summary=summary)
    return d / "out", read_manifest(d / "out" / "clips.parquet"), summary


def test_panda70m_spans_become_the_frames_their_pts_give(panda, videos):
    out, df, summary = panda
    assert summary["failures"] == 0 and summary["clips"] == sum(map(len, SPANS.values())) == len(df)
    got = df.groupby("meta_source_id")
    for vid, spans in SPANS.items():
        rows = got.get_group(vid).sort_values("start_frame")
        path = next(videos.glob(f"{vid}.*"))
        info, sha, times = probe(path), file_sha256(path), pts(path)
        for (t0, t1), (_, r) in zip(spans, rows.iterrows()):
            a, b = frames_between(path, round(t0, 3), round(t1, 3))
            assert (r.start_frame, r.end_frame) == (a, b), (vid, t0, t1)
            assert r.start_sec == pytest.approx(times[a], abs=1e-6)
            end = times[b] if b < len(times) else times[-1] + 1 / r.fps
            assert r.end_sec == pytest.approx(end, abs=1e-6)
            assert (r.width, r.height) == (info.width, info.height)
            assert r.video_sha256 == sha and r.clip_id == make_clip_id(sha, a, b)
            assert r.video_path == str(path)
    assert tuple(got.get_group("rot")[["width", "height"]].iloc[0]) == (96, 160)  # shown portrait
    assert tuple(got.get_group("sar")[["width", "height"]].iloc[0]) == (320, 96)  # 2:1 pixels
    vfr = got.get_group("vfr").sort_values("start_frame")
    assert tuple(vfr[["start_frame", "end_frame"]].iloc[1]) == (64, 77)  # by PTS: time * 25 would say 65..98
    assert list(df.columns[:len(CORE_COLUMNS)]) == list(CORE_COLUMNS)
    assert (df.caption_model == "panda70m").all() and (df.prompt_id == "imported").all()
    a = got.get_group("a").sort_values("start_frame")
    assert list(a.caption) == [cap("a", 0), cap("a", 1)]
    assert [list(c) for c in a.captions] == [[cap("a", 0)], [cap("a", 1)]]
    assert list(a.meta_matching_score) == pytest.approx([0.3, 0.4])
    assert list(df.meta_source_id) == [v for v, s in SPANS.items() for _ in s]  # the metadata's order


def test_the_same_spans_give_the_rows_split_videos_writes(panda, videos, tmp_path):
    """split-videos on a.mp4 (no trimming, no length limits) then import of the spans it found: the same rows."""
    from splitter.cli import main as split_main

    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(videos / "a.mp4", raw / "a.mp4")
    assert split_main([str(raw), "-o", str(tmp_path / "split"), "--detector", "content", "--min-sec", "0",
                       "--max-sec", "0", "--trim-frames", "0", "--no-progress"]) == 0
    split = read_manifest(tmp_path / "split" / "clips.parquet")
    assert len(split) == 2
    csv = panda_csv(tmp_path / "p.csv", [("a", [(hms(a), hms(b)) for a, b in zip(split.start_sec, split.end_sec)],
                                          ["x", "y"], [0.5, 0.5])])
    assert run("panda70m", csv, "--videos", raw, "-o", tmp_path / "imp") == 0
    imported = read_manifest(tmp_path / "imp" / "clips.parquet")
    pd.testing.assert_frame_equal(imported[list(CORE_COLUMNS)], split[list(CORE_COLUMNS)])


def test_bad_metadata_is_recorded_one_line_each(videos, tmp_path):
    (tmp_path / "v").mkdir()
    for name in ("a.mp4", "c.mov"):
        shutil.copy(videos / name, tmp_path / "v" / name)
    (tmp_path / "v" / "text.mp4").write_text("not a video at all")
    shutil.copy(videos / "a.mp4", tmp_path / "v" / "two.mp4")
    shutil.copy(videos / "c.mov", tmp_path / "v" / "two.mkv")
    csv = panda_csv(tmp_path / "p.csv", [
        ("a", [(0.0, 2.0), (1.0, 9.0)], ["ok", "past the end"], [0.5, 0.5]),  # line 2
        ("missing", [(0.0, 1.0)], ["x"], [0.5]),  # line 3
        ("text", [(0.0, 1.0)], ["x"], [0.5]),  # line 4: unreadable
        ("c", [("0:00:00.000", "0:00:0x.000")], ["x"], [0.5]),  # line 5: malformed
        ("c", [(0.0, 1.0)], ["x", "y"], [0.5]),  # line 6: unequal lists
        ("c", [(1.0, 0.5)], ["x"], [0.5]),  # line 7: end before start
        ("c", [(0.0, 1.0), (0.0, 1.0)], ["x", "x again"], [0.5, 0.5]),  # line 8: a duplicate clip
        ("two", [(0.0, 1.0)], ["x"], [0.5]),  # line 9: two files fit
    ])
    summary: dict = {}
    import_clips("panda70m", csv, tmp_path / "out", videos=tmp_path / "v", progress=False, summary=summary)
    df = read_manifest(tmp_path / "out" / "clips.parquet")
    assert sorted(df.caption) == ["ok", "x"]  # a's first span, c's first span of line 8
    fails = read_failed(tmp_path / "out")
    text = "\n".join(f"{f['path']}: {f['reason']}" for f in fails)
    assert len(fails) == 8 == summary["failures"], text
    for want in ("clip 1 of line 2: span 1.000-9.000 s ends past the video's end (4.000 s)", "no video for missing",
                 "not a readable video", "line 5: timestamp 0: malformed timestamp", "lists of unequal length",
                 "line 7: timestamp 0: end 0.500 s is not after start 1.000 s",
                 "clip 1 of line 8: duplicate clip: the same frames of the same video as clip 0 of line 8",
                 "several videos fit two (two.mkv, two.mp4)"):
        assert want in text, (want, text)
    assert all("\n" not in f["reason"] and f["stage"] == "import" for f in fails)


def test_a_file_of_another_format_is_one_line_and_exit_2(videos, tmp_path, capsys):
    csv = tmp_path / "webvid.csv"
    csv.write_text("videoid,contentUrl,duration,page_dir,name\n1,u,PT00H00M04S,d,cap\n")
    assert run("panda70m", csv, "--videos", videos, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing columns videoID, url, timestamp, caption, matching_score" in err
    assert "expected columns: videoID, url, timestamp, caption, matching_score" in err
    assert not (tmp_path / "out").exists()  # before any work
    assert run("panda70m", csv, "-o", tmp_path / "out") == 2  # no --videos
    assert "--videos is required" in capsys.readouterr().err
    for bad, message in ((["--pattern", "{name}.mp4"], "--pattern must name the video's path with {id}"),
                         (["--min-sec", "nan"], "--min-sec must be a number >= 0, got nan"),
                         (["--max-sec", "-1"], "--max-sec must be a number >= 0"),
                         (["--workers", "0"], "--workers must be at least 1")):
        assert run("panda70m", csv, "--videos", videos, "-o", tmp_path / "out", *bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_rerun_is_a_no_op_and_added_videos_are_the_only_work(videos, tmp_path):
    (tmp_path / "v").mkdir()
    shutil.copy(videos / "a.mp4", tmp_path / "v" / "a.mp4")
    csv = panda_csv(tmp_path / "p.csv", [("a", [(0.0, 2.0)], ["a"], [0.5]), ("c", [(0.0, 1.0)], ["c"], [0.6])])
    out = tmp_path / "out"
    first: dict = {}
    import_clips("panda70m", csv, out, videos=tmp_path / "v", progress=False, summary=first)
    manifest, failed = (out / "clips.parquet").read_bytes(), (out / "failed.jsonl").read_bytes()
    assert (first["processed"], first["clips"], first["failures"]) == (1, 1, 1)
    again: dict = {}
    import_clips("panda70m", csv, out, videos=tmp_path / "v", progress=False, summary=again)
    assert (again["processed"], again["skipped"]) == (0, 1)
    assert (out / "clips.parquet").read_bytes() == manifest and (out / "failed.jsonl").read_bytes() == failed
    shutil.copy(videos / "c.mov", tmp_path / "v" / "c.mov")  # the missing video arrives
    more: dict = {}
    import_clips("panda70m", csv, out, videos=tmp_path / "v", progress=False, summary=more)
    assert (more["processed"], more["skipped"], more["clips"], more["failures"]) == (1, 1, 2, 0)
    assert list(read_manifest(out / "clips.parquet").caption) == ["a", "c"]


def test_pattern_pairs_ids_with_nested_paths(videos, tmp_path):
    (tmp_path / "v" / "a").mkdir(parents=True)
    shutil.copy(videos / "a.mp4", tmp_path / "v" / "a" / "video.mp4")
    shutil.copy(videos / "c.mov", tmp_path / "v" / "a.mp4")  # a decoy the default pairing would take
    csv = panda_csv(tmp_path / "p.csv", [("a", [(0.0, 2.0)], ["a"], [0.5])])
    assert run("panda70m", csv, "--videos", tmp_path / "v", "--pattern", "{id}/video.mp4", "-o", tmp_path / "o") == 0
    df = read_manifest(tmp_path / "o" / "clips.parquet")
    assert list(df.video_path) == [str(tmp_path / "v" / "a" / "video.mp4")] and list(df.end_frame) == [50]


def test_webvid_whole_videos_and_their_durations(videos, tmp_path):
    csv = tmp_path / "webvid.csv"
    csv.write_text("videoid,contentUrl,duration,page_dir,name\n"
                   "a,https://x/a.mp4,PT00H00M04S,001_050,\"A red square, moving\"\n"
                   "c,https://x/c.mp4,PT00H00M09S,001_050,claims 9 s\n"
                   "ntsc,https://x/n.mp4,P0DT4S1,001_050,bad duration\n")
    assert run("webvid", csv, "--videos", videos, "-o", tmp_path / "o") == 0
    df = read_manifest(tmp_path / "o" / "clips.parquet")
    assert list(df.meta_source_id) == ["a"] and (df.start_frame[0], df.end_frame[0]) == (0, 100)
    assert df.caption[0] == "A red square, moving" and df.caption_model[0] == "webvid"
    assert df.meta_duration_sec[0] == 4.0 and df.meta_page_dir[0] == "001_050"
    text = " ".join(f["reason"] for f in read_failed(tmp_path / "o"))
    assert "shorter than its clip (9.000 s)" in text and "malformed duration 'P0DT4S1'" in text


def test_msrvtt_keeps_twenty_captions_and_tells_cut_files_from_full_ones(videos, tmp_path):
    doc = {"info": {}, "videos": [
        {"category": 3, "url": "https://y/a", "video_id": "a", "start time": 137.72, "end time": 141.72,
         "split": "train", "id": 0},  # a.mp4 is 4 s: the release's cut clip
        {"category": 5, "url": "https://y/n", "video_id": "ntsc", "start time": 1.0, "end time": 3.0,
         "split": "validate", "id": 1}],  # ntsc.mp4 is 4 s: a full video, cut at the span
        "sentences": [{"caption": f"{v} sentence {k}" + "!" * (k == 7), "video_id": v, "sen_id": k}
                      for v in ("a", "ntsc") for k in range(20)]}
    meta = tmp_path / "train_val_videodatainfo.json"
    meta.write_text(json.dumps(doc))
    out = {}
    for pick in ("first", "longest", "random-seeded"):
        assert run("msrvtt", meta, "--videos", videos, "-o", tmp_path / pick, "--caption-pick", pick) == 0
        out[pick] = read_manifest(tmp_path / pick / "clips.parquet")
    df = out["first"]
    assert [len(c) for c in df.captions] == [20, 20] and list(df.meta_split) == ["train", "validate"]
    assert (df.start_frame[0], df.end_frame[0]) == (0, 100)
    assert (df.start_frame[1], df.end_frame[1]) == frames_between(videos / "ntsc.mp4", 1.0, 3.0)
    assert list(df.caption) == ["a sentence 0", "ntsc sentence 0"]
    assert list(out["longest"].caption) == ["a sentence 7!", "ntsc sentence 7!"]
    rnd = out["random-seeded"].caption
    assert all(c in caps for c, caps in zip(rnd, df.captions))
    assert run("msrvtt", meta, "--videos", videos, "-o", tmp_path / "again", "--caption-pick", "random-seeded") == 0
    assert list(read_manifest(tmp_path / "again" / "clips.parquet").caption) == list(rnd)  # seeded: the same


def test_internvid_clips_of_one_video_on_scattered_lines(videos, tmp_path):
    rows = [{"YoutubeID": "a", "Start_timestamp": "00:00:02.000", "End_timestamp": "00:00:04.000",
             "Caption": "second", "Aesthetic_Score": 5.5, "UMT_Score": 0.41},
            {"YoutubeID": "c", "Start_timestamp": "00:00:00.000", "End_timestamp": "00:00:01.000",
             "Caption": "other", "Aesthetic_Score": 4.0, "UMT_Score": 0.3},
            {"YoutubeID": "a", "Start_timestamp": "00:00:00.000", "End_timestamp": "00:00:02.000",
             "Caption": "first", "Aesthetic_Score": 4.5, "UMT_Score": 0.52},
            {"YoutubeID": "a", "Start_timestamp": "0:00", "End_timestamp": "00:00:01.000", "Caption": "bad"}]
    meta = tmp_path / "internvid.jsonl"
    meta.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    summary: dict = {}
    import_clips("internvid", meta, tmp_path / "o", videos=videos, progress=False, summary=summary)
    df = read_manifest(tmp_path / "o" / "clips.parquet")
    assert summary["videos"] == 2 and list(df.caption) == ["second", "other", "first"]
    assert list(df.meta_aesthetic_score) == [5.5, 4.0, 4.5] and list(df.meta_umt_score) == [0.41, 0.3, 0.52]
    assert list(df.start_frame) == [50, 0, 0] and list(df.end_frame) == [100, 25, 50]
    assert [f["reason"] for f in read_failed(tmp_path / "o")] == [
        "line 4: malformed timestamp '0:00' (expected H:MM:SS.mmm)"]


def _v2d_sample(folder: Path, key: str, video: Path | None, status="success", caption="", **extra):
    meta = {"url": f"https://y/{key}", "key": key, "status": status, "error_message": None if status == "success"
            else "HTTP Error 404", **extra}
    (folder / f"{key}.json").write_text(json.dumps(meta))
    (folder / f"{key}.txt").write_text(caption)
    if video is not None:
        shutil.copy(video, folder / f"{key}.mp4")


def test_video2dataset_files_and_tars(videos, tmp_path):
    files = tmp_path / "v2d_files" / "00000"
    files.mkdir(parents=True)
    _v2d_sample(files, "000000000", videos / "a.mp4", caption="from the txt", clips=[[12.0, 16.0]],
                matching_score=0.47)
    _v2d_sample(files, "000000001", None, status="failed_to_download")
    (tmp_path / "v2d_files" / "00000_stats.json").write_text("{}")
    assert run("video2dataset", tmp_path / "v2d_files", "-o", tmp_path / "o1") == 0
    df = read_manifest(tmp_path / "o1" / "clips.parquet")
    assert list(df.caption) == ["from the txt"] and (df.start_frame[0], df.end_frame[0]) == (0, 100)
    assert (df.meta_source_start_sec[0], df.meta_source_end_sec[0], df.meta_matching_score[0]) == (12.0, 16.0, 0.47)
    assert [f["reason"] for f in read_failed(tmp_path / "o1")] == [
        "00000/000000001: video2dataset did not download it (failed_to_download: HTTP Error 404)"]

    tars = tmp_path / "v2d_tars"
    tars.mkdir()
    with tarfile.open(tars / "00000.tar", "w") as t:
        for name in sorted(p.name for p in files.iterdir()):
            t.add(files / name, arcname=name)
    assert run("video2dataset", tars, "-o", tmp_path / "o2") == 0
    df2 = read_manifest(tmp_path / "o2" / "clips.parquet")
    extracted = tmp_path / "o2" / "videos" / "00000" / "000000000.mp4"
    assert list(df2.video_path) == [str(extracted)] and extracted.read_bytes() == (videos / "a.mp4").read_bytes()
    pd.testing.assert_frame_equal(df2.drop(columns=["video_path"]), df.drop(columns=["video_path"]))


def test_opensora_csv_round_trips_what_build_shards_exports(panda, tmp_path):
    """Panda import -> build-shards --where on a meta column -> opensora.csv -> import: the clips kept, whole."""
    from index.shards.cli import shards_main

    out, df, _ = panda
    assert shards_main([str(out / "clips.parquet"), "-o", str(tmp_path / "shards"), "--format", "opensora-csv",
                        "--no-dedup", "--where", "meta_matching_score > 0.35"]) == 0
    csv = pd.read_csv(tmp_path / "shards" / "opensora.csv")
    want = df[df.meta_matching_score > 0.35]
    assert sorted(csv.text) == sorted(want.caption) and len(csv) == 2
    summary: dict = {}
    import_clips("opensora-csv", tmp_path / "shards" / "opensora.csv", tmp_path / "back", progress=False,
                 summary=summary)
    back = read_manifest(tmp_path / "back" / "clips.parquet")
    assert summary["failures"] == 0 and sorted(back.caption) == sorted(csv.text)
    by_path = back.set_index("video_path")
    for r in csv.itertuples():
        got = by_path.loc[r.path]
        assert (got.start_frame, got.end_frame, got.width, got.height) == (0, r.num_frames, r.width, r.height)
        assert got.fps == pytest.approx(r.fps, rel=1e-3) and got.caption_model == "opensora-csv"


def test_where_filters_on_imported_scores(panda):
    """Panda-70M's high-quality rule as a filter over the imported columns."""
    from index import query
    from index.shards.where import parse_where

    out, df, _ = panda
    node = parse_where("meta_matching_score > 0.35", df)
    with query.connect() as con:
        kept = con.execute(f"SELECT meta_source_id FROM read_parquet('{out / 'clips.parquet'}') "
                           f"WHERE {node.sql()}").fetchall()
    assert sorted(r[0] for r in kept) == sorted(df.meta_source_id[df.meta_matching_score > 0.35])


def test_videos_on_a_bucket_give_the_local_rows(videos, panda, s3, tmp_path):
    import fsspec

    fs = fsspec.filesystem("s3")
    for name in ("a.mp4", "vfr.mkv"):
        fs.put(str(videos / name), f"{s3[5:]}/raw/{name}")
    csv = panda_csv(tmp_path / "p.csv", [(v, SPANS[v], [cap(v, k) for k in range(len(SPANS[v]))],
                                          [0.3 + 0.1 * k for k in range(len(SPANS[v]))]) for v in ("a", "vfr")])
    fs.put(str(csv), f"{s3[5:]}/meta/p.csv")
    assert run("panda70m", f"{s3}/meta/p.csv", "--videos", f"{s3}/raw", "-o", f"{s3}/out") == 0
    remote = read_manifest(f"{s3}/out/clips.parquet")
    local = panda[1][panda[1].meta_source_id.isin(["a", "vfr"])].reset_index(drop=True)
    assert list(remote.video_path) == [f"{s3}/raw/{Path(p).name}" for p in local.video_path]
    pd.testing.assert_frame_equal(remote.drop(columns=["video_path"]), local.drop(columns=["video_path"]))
    summary: dict = {}
    import_clips("panda70m", f"{s3}/meta/p.csv", f"{s3}/out", videos=f"{s3}/raw", progress=False, summary=summary)
    assert summary["processed"] == 0 and summary["skipped"] == 2


def test_caption_videos_keeps_the_imported_caption(panda, tmp_path):
    from captioner.cli import main as caption_main
    from captioner.testing import build_tiny_model

    model = build_tiny_model("qwen2.5-vl", tmp_path / "tiny")
    out, df, _ = panda
    assert caption_main([str(out / "clips.parquet"), "-o", str(tmp_path / "cap"), "--model", str(model),
                         "--num-frames", "2", "--max-new-tokens", "4", "--quiet"]) == 0
    cap = read_manifest(tmp_path / "cap" / "clips.parquet")
    assert list(cap.clip_id) == list(df.clip_id)
    assert list(cap.meta_source_caption) == list(df.caption)
    assert (cap.caption_model == str(model)).all() and (cap.prompt_id == "detailed").all()
    assert [list(c) for c in cap.captions] == [list(c) for c in df.captions]


@pytest.mark.slow
def test_kill_then_rerun_gives_the_uninterrupted_manifest(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from splitter.imports import STAGE

    raw = tmp_path / "raw"
    raw.mkdir()
    ids = [f"v{i:02d}" for i in range(12)]
    for i, vid in enumerate(ids):
        hostile.good(raw / f"{vid}.mp4", shade=i + 1)
    csv = panda_csv(tmp_path / "p.csv", [(v, [(0.0, 2.0), (2.5, 5.0)], [f"{v} 0", f"{v} 1"], [0.5, 0.6])
                                         for v in ids + ["gone"]])
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "SHOTCAP_FLUSH_SECONDS": "0"}  # a batch per video
    cmd = [sys.executable, "-m", "splitter.imports", "panda70m", str(csv), "--videos", str(raw), "-o", str(out),
           "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / ".parts" / STAGE
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(parts.glob("*.parquet")):
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "clips.parquet").exists() and 1 <= len(list(parts.glob("*.parquet"))) < len(ids)
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    import_clips("panda70m", csv, tmp_path / "ref", videos=raw, progress=False)  # uninterrupted
    got, ref = read_manifest(out / "clips.parquet"), read_manifest(tmp_path / "ref" / "clips.parquet")
    assert len(got) == 2 * len(ids)
    pd.testing.assert_frame_equal(got, ref)
    assert read_failed(out) == read_failed(tmp_path / "ref") and len(read_failed(out)) == 1


def test_real_mpeg_ps_with_a_late_first_pts(realdata, tmp_path):
    """cityCC0.mpg: an MPEG program stream whose first frame is at 0.54 s, shown 720x405 (non-square pixels)."""
    path = realdata / "cityCC0.mpg"
    times = pts(path)
    spans = [(times[10], times[60]), (times[60], times[-1] + 0.04)]  # the second runs to the video's end
    rows = [{"YoutubeID": "cityCC0", "Start_timestamp": hms(a), "End_timestamp": hms(b), "Caption": f"c{k}"}
            for k, (a, b) in enumerate(spans)]
    meta = tmp_path / "internvid.jsonl"
    meta.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    import_clips("internvid", meta, tmp_path / "o", videos=realdata, progress=False)
    df = read_manifest(tmp_path / "o" / "clips.parquet")
    assert [(r.start_frame, r.end_frame) for r in df.itertuples()] == [(10, 60), (60, len(times))]
    assert list(df.start_sec) == pytest.approx([times[10], times[60]], abs=1e-6)
    info = probe(path)
    assert (df.width[0], df.height[0]) == (info.width, info.height) == (720, 405)


def test_sorting_in_pieces_gives_the_same_outputs(panda, videos, tmp_path, monkeypatch):
    """The units, the manifest and failed.jsonl sorted in pieces of 2 rows (a corpus past SHOTCAP_SORT_ROWS)."""
    from index import query

    out, df, _ = panda
    csv = panda_csv(tmp_path / "p.csv", [(vid, spans, [cap(vid, k) for k in range(len(spans))],
                                          [0.3 + 0.1 * k for k in range(len(spans))])
                                         for vid, spans in SPANS.items()] + [(g, [(0, 1)], ["x"], [0.1])
                                                                             for g in ("gone3", "gone1", "gone2")])
    monkeypatch.setattr(query, "SORT_ROWS", 2)
    import_clips("panda70m", csv, tmp_path / "o", videos=videos, progress=False)
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "o" / "clips.parquet"), df)
    assert [f["path"].rsplit("/", 1)[1] for f in read_failed(tmp_path / "o")] == ["gone1", "gone2", "gone3"]
