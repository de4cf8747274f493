"""`caption-videos` end to end through `from_pretrained` on tiny random models: synthetic and real clips,
resume after a kill, bad inputs, other model families, two-pass mode, raw-folder input via the splitter."""

from __future__ import annotations

import json
import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest

from captioner.cli import main
from captioner.pipeline import stage_name
from captioner.testing import build_tiny_model
from index import Clip, file_sha256, probe, read_manifest, write_manifest
from index.manifest import PartStore, read_failed

FAST = ["--num-frames", "4", "--max-new-tokens", "8", "--batch-size", "4", "--quiet"]


def manifest_from_ranges(videos: dict[Path, list[tuple[int, int]]], dst: Path) -> pd.DataFrame:
    """A clips manifest for given [start_frame, end_frame) ranges (what the splitter would write)."""
    rows = []
    for path, ranges in videos.items():
        info, sha = probe(path), file_sha256(path)
        for a, b in ranges:
            rows.append(Clip.from_range(str(path), sha, a, b, a / info.fps, b / info.fps, info.fps,
                                        info.width, info.height).to_dict())
    df = pd.DataFrame(rows)
    write_manifest(df, dst)
    return df


@pytest.fixture(scope="module")
def tiny_qwen25(tmp_path_factory):
    return build_tiny_model("qwen2.5-vl", tmp_path_factory.mktemp("tiny_qwen25"))


@pytest.fixture(scope="module")
def synth_manifest(sample_videos, tmp_path_factory):
    folder, truths = sample_videos
    dst = tmp_path_factory.mktemp("manifest") / "clips.parquet"
    df = manifest_from_ranges({folder / name: t.shots for name, t in truths.items()}, dst)
    return dst, df


def _run(manifest, out, model, *extra) -> int:
    return main([str(manifest), "-o", str(out), "--model", str(model), *FAST, *extra])


def test_captions_synthetic_clips_end_to_end(synth_manifest, tiny_qwen25, tmp_path):
    manifest, src = synth_manifest
    out = tmp_path / "out"
    assert _run(manifest, out, tiny_qwen25) == 0
    df = read_manifest(out / "clips.parquet")
    assert sorted(df["clip_id"]) == sorted(src["clip_id"])
    assert (df["caption_model"] == str(tiny_qwen25)).all() and (df["prompt_id"] == "detailed").all()
    assert df["caption"].map(lambda c: isinstance(c, str)).all()
    assert (df["caption_tokens"] > 0).all()
    for row in df.itertuples():
        assert len(row.frame_times) == 4
        assert row.start_sec <= min(row.frame_times) and max(row.frame_times) < row.end_sec
        # a random model rarely stops on its own: anything that fails a check is retried, then flagged
        assert row.caption_flags == "" or row.caption_retries == 1
    assert read_failed(out) == []
    # the core columns are passed through untouched
    pd.testing.assert_frame_equal(df.sort_values("clip_id")[list(src.columns)].reset_index(drop=True),
                                  src.sort_values("clip_id").reset_index(drop=True), check_dtype=False)


def test_rerun_and_kill_resume_lose_and_duplicate_nothing(synth_manifest, tiny_qwen25, tmp_path, capsys,
                                                          monkeypatch):
    manifest, _ = synth_manifest
    out = tmp_path / "out"
    monkeypatch.setenv("SHOTCAP_FLUSH_SECONDS", "0")  # a batch per finished unit
    assert _run(manifest, out, tiny_qwen25) == 0
    first = read_manifest(out / "clips.parquet")
    parts = sorted((out / ".parts" / stage_name(str(tiny_qwen25), "detailed")).glob("*.parquet"))
    assert len(parts) == 2  # one unit per source video
    parts[0].unlink()  # as if killed before the second video's part was written
    assert _run(manifest, out, tiny_qwen25) == 0
    again = read_manifest(out / "clips.parquet")
    assert again["clip_id"].is_unique and len(again) == len(first)
    pd.testing.assert_frame_equal(again, first)
    assert _run(manifest, out, tiny_qwen25) == 0  # nothing left to do
    assert "already done" in capsys.readouterr().err
    pd.testing.assert_frame_equal(read_manifest(out / "clips.parquet"), first)
    # a unit that failed for a passing reason is skipped by a re-run, and redone with --retry-failed
    store = PartStore(out, stage_name(str(tiny_qwen25), "detailed"))
    key = store._meta(parts[1].name)["done"][0]  # the batch's metadata names the unit it completes
    ids = pd.read_parquet(parts[1])["clip_id"].tolist()  # a part holds the clip ids and the caption columns
    video = first.set_index("clip_id").loc[ids[0], "video_path"]
    parts[1].unlink()
    with PartStore(out, stage_name(str(tiny_qwen25), "detailed")) as store:
        store.fail(key, video, "worker process died", ids=ids)
    assert _run(manifest, out, tiny_qwen25) == 0
    assert len(read_manifest(out / "clips.parquet")) < len(first) and read_failed(out)
    assert _run(manifest, out, tiny_qwen25, "--retry-failed") == 0
    pd.testing.assert_frame_equal(read_manifest(out / "clips.parquet"), first)
    assert read_failed(out) == []
    # other sampling options in the same folder would mix outputs: refused with a clear error
    assert main([str(manifest), "-o", str(out), "--model", str(tiny_qwen25), "--quiet", "--num-frames", "6",
                 "--max-new-tokens", "8"]) == 2
    assert "other options" in capsys.readouterr().err


def test_clips_already_captioned_with_same_model_and_prompt_are_skipped(synth_manifest, tiny_qwen25, tmp_path):
    manifest, src = synth_manifest
    df = src.copy()
    df["caption"] = ["kept caption"] + [None] * (len(df) - 1)
    df["caption_model"] = str(tiny_qwen25)
    df["prompt_id"] = "detailed"
    write_manifest(df, tmp_path / "partly.parquet")
    assert _run(tmp_path / "partly.parquet", tmp_path / "out", tiny_qwen25) == 0
    got = read_manifest(tmp_path / "out" / "clips.parquet").set_index("clip_id")
    assert got.loc[src["clip_id"][0], "caption"] == "kept caption"
    assert got["caption"].map(lambda c: isinstance(c, str)).all()


def test_bad_video_goes_to_failed_jsonl(synth_manifest, tiny_qwen25, tmp_path):
    _, src = synth_manifest
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"")
    bad = src.iloc[:1].copy()
    bad["video_path"], bad["video_sha256"] = str(broken), hashlib.sha256(b"").hexdigest()
    bad["clip_id"] = "broken-clip"
    write_manifest(pd.concat([src, bad], ignore_index=True), tmp_path / "with_bad.parquet")
    assert _run(tmp_path / "with_bad.parquet", tmp_path / "out", tiny_qwen25) == 0
    failed = read_failed(tmp_path / "out")
    assert [f["path"] for f in failed] == [str(broken)] and "zero-byte" in failed[0]["reason"]
    assert len(read_manifest(tmp_path / "out" / "clips.parquet")) == len(src)
    # the file is downloaded again and re-split: its clips are captioned and the old failure is gone
    shutil.copy(src["video_path"].iloc[0], broken)
    fixed = manifest_from_ranges({broken: [(0, 20)]}, tmp_path / "fixed.parquet")
    write_manifest(pd.concat([src, fixed], ignore_index=True), tmp_path / "fixed.parquet")
    assert _run(tmp_path / "fixed.parquet", tmp_path / "out", tiny_qwen25) == 0
    assert read_failed(tmp_path / "out") == []
    assert len(read_manifest(tmp_path / "out" / "clips.parquet")) == len(src) + 1


def test_usage_errors_are_one_line(synth_manifest, tmp_path, capsys, monkeypatch):
    manifest, _ = synth_manifest
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main([str(manifest), "-o", str(tmp_path), "--model", "cogvlm"]) == 2
    assert "--trust-remote-code" in capsys.readouterr().err
    assert main([str(tmp_path / "nope.parquet"), "-o", str(tmp_path), "--model", "qwen-vl"]) == 2
    assert "no such" in capsys.readouterr().err
    assert main([str(manifest), "-o", str(tmp_path), "--model", "qwen-vl", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in err and "hf download" in err and len(err.strip().splitlines()) == 1
    assert "default" not in err  # the user named this model
    assert main([str(manifest), "-o", str(tmp_path), "--quiet"]) == 2  # no --model: the error says it is the default
    err = capsys.readouterr().err
    assert "no --model given, so the default qwen-vl is used" in err and "hf download" in err
    from trainer.testing import make_tiny_t5  # a real model folder, but not a video-language model

    t5 = make_tiny_t5(str(tmp_path / "t5"))
    assert main([str(manifest), "-o", str(tmp_path / "o"), "--model", t5, "--quiet"]) == 2
    assert "cannot run this model" in capsys.readouterr().err


@pytest.mark.slow
def test_llava_onevision_with_fixed_fps_sampling(synth_manifest, tmp_path):
    manifest, src = synth_manifest
    model = build_tiny_model("llava-onevision", tmp_path / "llava")
    out = tmp_path / "out"
    assert main([str(manifest), "-o", str(out), "--model", str(model), "--sample-fps", "1", "--max-new-tokens",
                 "8", "--prompt", "short", "--quiet"]) == 0
    df = read_manifest(out / "clips.parquet")
    assert len(df) == len(src) and (df["prompt_id"] == "short").all()
    lengths = {len(t) for t in df["frame_times"]}
    assert len(lengths) > 1  # clips of different durations got different frame counts


@pytest.mark.slow
def test_two_pass_mode(synth_manifest, tmp_path):
    manifest, src = synth_manifest
    model = build_tiny_model("qwen2-vl", tmp_path / "qwen2")
    out = tmp_path / "out"
    assert main([str(manifest), "-o", str(out), "--model", str(model), "--two-pass", "--num-frames", "2",
                 "--max-new-tokens", "8", "--quiet"]) == 0
    df = read_manifest(out / "clips.parquet")
    assert len(df) == len(src) and df["caption"].map(lambda c: isinstance(c, str)).all()
    config = json.loads(next((out / ".parts").glob("*/config.json")).read_text())
    assert config["two_pass"].startswith("frame+summary")
    assert set(df["prompt_id"]) == {"frame+summary"}  # the prompts that wrote the text, not the unused default
    assert set(df["caption_model"]) == {str(model)}  # one model did both passes


@pytest.mark.slow
def test_real_clips(realdata, realcuts, tiny_qwen25, tmp_path):
    videos = {}
    for name in ("bikes.mp4", "cityCC0.mpg"):
        fps = probe(realdata / name).fps
        cuts = [0] + [round(t * fps) for t in realcuts[name]["hard"]] + [realcuts[name]["frames"]]
        videos[realdata / name] = [(a, b) for a, b in zip(cuts, cuts[1:]) if b - a >= 8]
    manifest_from_ranges(videos, tmp_path / "real.parquet")
    out = tmp_path / "out"
    assert _run(tmp_path / "real.parquet", out, tiny_qwen25, "--prompt", "dense_shot") == 0
    df = read_manifest(out / "clips.parquet")
    assert len(df) == sum(len(r) for r in videos.values()) == 8
    assert df["caption"].map(lambda c: isinstance(c, str)).all() and read_failed(out) == []


@pytest.mark.slow
def test_raw_folder_is_split_first(sample_videos, tiny_qwen25, tmp_path):
    folder, _ = sample_videos
    out = tmp_path / "out"
    assert main([str(folder), "-o", str(out), "--model", str(tiny_qwen25), *FAST]) == 0
    split = read_manifest(out / "split" / "clips.parquet")
    df = read_manifest(out / "clips.parquet")
    assert len(df) == len(split) > 0 and set(df["clip_id"]) == set(split["clip_id"])


def test_subset_rerun_and_empty_clip(synth_manifest, tiny_qwen25, tmp_path):
    manifest, src = synth_manifest
    out = tmp_path / "out"
    assert _run(manifest, out, tiny_qwen25) == 0
    one_video = src[src["video_path"] == src["video_path"].iloc[0]].copy()
    empty = one_video.iloc[:1].copy()
    empty["end_frame"] = empty["start_frame"]
    empty["num_frames"], empty["clip_id"] = 0, "0" * 20
    write_manifest(one_video, tmp_path / "one.parquet")
    assert _run(tmp_path / "one.parquet", out, tiny_qwen25) == 0  # the same folder, a smaller input
    assert sorted(read_manifest(out / "clips.parquet")["clip_id"]) == sorted(one_video["clip_id"])
    write_manifest(pd.concat([one_video, empty], ignore_index=True), tmp_path / "empty.parquet")
    assert _run(tmp_path / "empty.parquet", tmp_path / "out2", tiny_qwen25) == 0
    got = read_manifest(tmp_path / "out2" / "clips.parquet")
    assert sorted(got["clip_id"]) == sorted(one_video["clip_id"])  # the empty range is refused, not captioned
    assert got["caption"].map(lambda c: isinstance(c, str)).all()
    [failed] = read_failed(tmp_path / "out2")
    assert "row 3 (clip " + "0" * 20 + "): end_frame is 0, must be > start_frame (0)" in failed["reason"]


def test_a_source_with_many_clips_streams_through_in_chunks(sample_videos, tiny_qwen25, tmp_path):
    """Never more than `chunk_clips` clips' frames at once, and the same captions as holding them all."""
    from captioner.backends import make_backend
    from captioner.frames import FramePolicy
    from captioner.models import resolve_model
    from captioner.pipeline import CaptionStage, Captioner
    from index.engine import Unit
    from index.manifest import PartStore
    from captioner.prompts import load_prompt

    folder, _ = sample_videos
    path = sorted(folder.glob("*.mp4"))[0]
    rows = manifest_from_ranges({path: [(a, a + 12) for a in range(0, 120, 12)]}, tmp_path / "m.parquet")
    rows = rows.to_dict("records")
    rows.append(dict(rows[-1], clip_id="past-the-end", start_frame=10_000, end_frame=10_012))
    backend = make_backend("transformers", resolve_model(str(tiny_qwen25)), batch_size=2, device="cpu").load()
    sizes = []

    class Counting(Captioner):
        def caption_requests(self, reqs):
            sizes.append(len(reqs))
            return super().caption_requests(reqs)

    def captioner(chunk):
        return Counting(backend, load_prompt("detailed"), FramePolicy(4), max_new_tokens=6, chunk_clips=chunk)

    def run(chunk):
        return captioner(chunk).caption_unit(str(path), rows)

    streamed, unreadable = run(4)
    assert sizes == [4, 4, 2] and unreadable == ["past-the-end"]
    sizes.clear()
    whole, unreadable = run(100)
    assert sizes == [10] and unreadable == ["past-the-end"]
    assert list(streamed["clip_id"]) == list(whole["clip_id"]) == [r["clip_id"] for r in rows[:10]]
    assert list(streamed["caption"]) == list(whole["caption"])
    assert list(map(list, streamed["frame_times"])) == list(map(list, whole["frame_times"]))
    # on Ray, such a source is not decoded ahead in a CPU task but streamed inside the model actor
    stage = CaptionStage(pd.DataFrame(rows), PartStore(tmp_path / "o", "caption-test"), captioner(4),
                         lambda load: captioner(4), decode_ahead=True)
    unit = Unit("key", str(path), rows, len(rows), tuple(r["clip_id"] for r in rows))
    assert stage.prepare(unit) is unit
    out = stage.process(captioner(4), stage.prepare(unit))
    assert [cid for cid, _ in out.failures] == ["past-the-end"]
    assert list(out.rows["caption"]) == list(whole["caption"])


def test_a_subset_first_then_the_whole_manifest_loses_no_clip(synth_manifest, tiny_qwen25, tmp_path, capsys):
    manifest, src = synth_manifest
    out = tmp_path / "out"
    one_video = src[src["video_path"] == src["video_path"].iloc[0]]
    write_manifest(one_video.iloc[:2], tmp_path / "subset.parquet")  # two clips of one source
    assert _run(tmp_path / "subset.parquet", out, tiny_qwen25) == 0
    capsys.readouterr()
    assert _run(manifest, out, tiny_qwen25) == 0  # the same folder, every clip: only the new ones are captioned
    got = read_manifest(out / "clips.parquet")
    assert sorted(got["clip_id"]) == sorted(src["clip_id"]) and got["caption"].map(bool).all()
    err = capsys.readouterr().err
    assert f"captioned now                         │ {len(src) - 2} " in err


def test_a_source_replaced_after_the_split_is_not_captioned(synth_manifest, tiny_qwen25, tmp_path):
    _, src = synth_manifest
    paths = sorted(set(src["video_path"]))
    copies = {p: tmp_path / Path(p).name for p in paths}
    for p, dst in copies.items():
        shutil.copy(p, dst)
    df = src.assign(video_path=src["video_path"].map(lambda p: str(copies[p])))
    write_manifest(df, tmp_path / "m.parquet")
    shutil.copy(paths[1], copies[paths[0]])  # other content under the first name
    assert _run(tmp_path / "m.parquet", tmp_path / "out", tiny_qwen25) == 0
    got = read_manifest(tmp_path / "out" / "clips.parquet")
    assert set(got["video_path"]) == {str(copies[paths[1]])}
    [failed] = read_failed(tmp_path / "out")
    assert failed["path"] == str(copies[paths[0]]) and "video changed since it was split" in failed["reason"]


def test_a_nan_fps_row_with_sample_fps_fails_alone(synth_manifest, tiny_qwen25, tmp_path):
    _, src = synth_manifest
    df = src.copy()
    df.loc[0, "fps"] = float("nan")  # a hand-edited manifest
    write_manifest(df, tmp_path / "m.parquet")
    args = ["--sample-fps", "2", "--max-frames", "4"]
    assert main([str(tmp_path / "m.parquet"), "-o", str(tmp_path / "out"), "--model", str(tiny_qwen25),
                 "--max-new-tokens", "8", "--batch-size", "4", "--quiet", *args]) == 0
    got = read_manifest(tmp_path / "out" / "clips.parquet")
    assert len(got) == len(df) - 1 and got["frame_times"].map(lambda t: all(x == x for x in t)).all()
    [failed] = read_failed(tmp_path / "out")
    assert "fps is nan, must be a positive number" in failed["reason"]


def test_a_folder_input_shows_the_split_failures_and_says_why_nothing_is_left(tmp_path, tiny_qwen25, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "broken.mp4").write_bytes(b"not a video at all")
    assert main([str(raw), "-o", str(tmp_path / "out") + "/", "--model", str(tiny_qwen25), *FAST,
                 "--detector", "content"]) == 1
    err = capsys.readouterr().err
    assert f"failed: {raw / 'broken.mp4'}: not a readable video" in err
    assert "no clips to caption: the split of" in err and str(tmp_path / "out" / "failed.jsonl") in err
    assert "//" not in err  # paths are normalised


@pytest.mark.slow
def test_two_workers_give_the_same_manifest(synth_manifest, tiny_qwen25, tmp_path):
    manifest, _ = synth_manifest
    assert _run(manifest, tmp_path / "one", tiny_qwen25) == 0
    assert _run(manifest, tmp_path / "two", tiny_qwen25, "--workers", "2") == 0  # each worker loads the model once
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "one" / "clips.parquet"),
                                  read_manifest(tmp_path / "two" / "clips.parquet"))
