"""index-clips and search-clips end to end: duplicate groups, a second manifest (cross-dataset), resume,
bad sources, captions added after indexing, a tiny CLIP as the image model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from index.dedup.cli import build_index, index_main, search, search_main
from index.dedup.faiss_index import VectorIndex
from index.manifest import read_failed, read_manifest, write_manifest
from test_index_data import make_dataset, manifest_rows


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("cli-src"), shots=5, frames=30)
    out = tmp_path_factory.mktemp("cli-index") / "idx"
    assert index_main([str(data["manifest"]), "-o", str(out)]) == 0
    return data, out


def test_copies_resizes_and_trims_form_one_group_per_shot(indexed):
    data, out = indexed
    clips = read_manifest(out / "clips.parquet")
    assert len(clips) == 3 * data["shots"]
    assert clips["dup_group"].nunique() == data["shots"] and (clips["dup_group"] >= 0).all()
    assert clips.groupby("dup_group")["keep"].sum().eq(1).all()
    kept = clips[clips["keep"]]
    assert not kept["video_path"].str.contains("resized").any()  # the trimmed copies are shorter
    assert (kept["num_frames"] == 30).all()
    meta = json.loads((out / "index.json").read_text())
    assert meta["dedup"]["exact_duplicates"] == data["shots"]  # the bit-identical copy
    assert meta["visual"]["name"] == "signature" and meta["visual_index"]["kind"] == "flat"
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert len(pairs) == 3 * data["shots"] and (pairs["similarity"] >= meta["dedup"]["threshold"]).all()
    hist = np.load(out / "similarity.npz")
    assert len(hist["nearest"]) == len(clips) and hist["counts"].sum() == len(clips)
    assert (out / "similarity_hist.png").read_bytes()[:4] == b"\x89PNG"
    assert np.load(out / "visual.npy").shape[0] == VectorIndex.load(out, "visual").index.ntotal == len(clips)


def test_search_by_text_and_by_clip(indexed, capsys):
    data, out = indexed
    clips = read_manifest(out / "clips.parquet")
    hits = search(out, text=data["captions"][3], k=3)
    assert (hits["caption"] == data["captions"][3]).all()  # the three copies of that shot
    assert hits["score"].iloc[0] > 0.99
    original = clips[clips["video_path"].str.endswith("original.mp4")].iloc[1]
    like = search(out, like=original["clip_id"], k=2)
    assert original["clip_id"] not in like["clip_id"].tolist()
    assert like["caption"].iloc[0] == original["caption"] and like["score"].iloc[0] > 0.9
    assert search_main([str(out), "--like", original["clip_id"], "-k", "2"]) == 0
    assert "resized.mp4" in capsys.readouterr().out
    assert search_main([str(out), "--like", "no-such-clip"]) == 2
    assert "search-clips: error: clip no-such-clip is not in the index" in capsys.readouterr().err


def test_second_manifest_is_deduplicated_against_the_index(indexed, tmp_path):
    data, first = indexed
    out = tmp_path / "idx"
    shutil.copytree(first, out)
    before = read_manifest(out / "clips.parquet")
    # a new dataset: a re-encode of shot 2 (already indexed) and a new video
    from index import synth
    from index.synth import ShotSpec
    from index.video import write_video

    new_src = tmp_path / "new dataset clip.mp4"
    write_video(new_src, data["frames"][60:90, :, ::-1][:, :, ::-1].copy(), 25.0)  # same pixels, new file
    other = tmp_path / "other.mp4"
    synth.make_video(other, [ShotSpec(30, seed=7)], size=(96, 64))
    rows = manifest_rows(new_src, [(0, 30)], ["the same shot again"]) + manifest_rows(other, [(0, 30)], ["new"])
    write_manifest(pd.DataFrame(rows), tmp_path / "second.parquet")
    assert index_main([str(tmp_path / "second.parquet"), "-o", str(out)]) == 0
    clips = read_manifest(out / "clips.parquet")
    assert len(clips) == len(before) + 2
    pd.testing.assert_frame_equal(clips.iloc[:len(before)][["clip_id", "keep"]], before[["clip_id", "keep"]])
    new = clips.iloc[len(before):].set_index("video_path")
    assert not new.loc[str(new_src), "keep"] and new.loc[str(other), "keep"]
    assert new.loc[str(new_src), "x_batch"] == 1
    meta = json.loads((out / "index.json").read_text())
    assert len(meta["batches"]) == 2 and meta["dedup"]["cross_batch_groups"] == 1
    assert VectorIndex.load(out, "visual").clip_ids[:len(before)] == before["clip_id"].tolist()
    # running the same manifest again changes nothing
    snapshot = (out / "clips.parquet").read_bytes()
    assert index_main([str(tmp_path / "second.parquet"), "-o", str(out)]) == 0
    assert (out / "clips.parquet").read_bytes() == snapshot
    assert len(json.loads((out / "index.json").read_text())["batches"]) == 2


def test_bad_sources_are_recorded_and_captions_added_later_are_picked_up(tmp_path):
    data = make_dataset(tmp_path / "src", shots=2, frames=16)
    df = read_manifest(data["manifest"])
    changed = tmp_path / "changed.mp4"
    shutil.copy(data["folder"] / "original.mp4", changed)
    extra = pd.DataFrame(manifest_rows(changed, [(0, 8)], ["x"]) +
                         manifest_rows(data["folder"] / "original.mp4", [(0, 8)], ["y"]))
    extra.loc[1, "video_path"], extra.loc[1, "clip_id"] = str(tmp_path / "missing.mp4"), "missing-clip"
    with open(changed, "ab") as f:
        f.write(b"junk")
    df = pd.concat([df.assign(caption=None), extra], ignore_index=True)
    write_manifest(df, tmp_path / "m.parquet")
    meta = build_index(tmp_path / "m.parquet", tmp_path / "idx")
    assert meta["clips"] == 6 and meta["failed"] == 2
    reasons = sorted(f["reason"] for f in read_failed(tmp_path / "idx"))
    assert reasons == ["1 clips: video changed since it was split (sha256 mismatch)", "1 clips: video missing"]
    assert not np.load(tmp_path / "idx" / "text.npy").any()  # no captions yet
    write_manifest(df.assign(caption="a red square on green"), tmp_path / "captioned.parquet")
    build_index(tmp_path / "captioned.parquet", tmp_path / "idx")
    clips = read_manifest(tmp_path / "idx" / "clips.parquet")
    assert len(clips) == 6 and (clips["caption"] == "a red square on green").all()
    assert np.load(tmp_path / "idx" / "text.npy").any(axis=1).all()
    with pytest.raises(Exception, match="other options"):
        build_index(tmp_path / "captioned.parquet", tmp_path / "idx", num_frames=4)


def test_a_saved_clip_model_is_one_flag_away(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    model_dir = tmp_path / "clip"
    cfg = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "vocab_size": 64, "max_position_embeddings": 16},
                     vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                     projection_dim=12)
    CLIPModel(cfg).save_pretrained(model_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(model_dir)
    data = make_dataset(tmp_path / "src", shots=2, frames=12)
    out = tmp_path / "idx"
    assert index_main([str(data["manifest"]), "-o", str(out), "--image-model", str(model_dir), "--frames", "2"]) == 0
    assert np.load(out / "visual.npy").shape == (6, 12)
    meta = json.loads((out / "index.json").read_text())
    assert meta["visual"]["model"] == str(model_dir) and meta["visual"]["num_frames"] == 2


def test_a_clip_past_the_end_fails_alone_and_bad_output_is_one_line(tmp_path, capsys):
    data = make_dataset(tmp_path / "src", shots=2, frames=12)
    df = read_manifest(data["manifest"]).sort_values(["video_path", "start_frame"]).reset_index(drop=True)
    df.loc[0, "end_frame"] = 10**6  # a hand-edited row, consistent in itself, beyond the video's end
    df.loc[0, "num_frames"] = 10**6 - df.loc[0, "start_frame"]
    write_manifest(df, tmp_path / "edited.parquet")
    assert index_main([str(tmp_path / "edited.parquet"), "-o", str(tmp_path / "idx")]) == 0
    failed = read_failed(tmp_path / "idx")
    assert len(failed) == 1 and df.loc[0, "clip_id"] in failed[0]["reason"] and "past the" in failed[0]["reason"]
    clips = read_manifest(tmp_path / "idx" / "clips.parquet")
    assert len(clips) == len(df) - 1
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    capsys.readouterr()
    assert index_main([str(data["manifest"]), "-o", str(blocker)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("index-clips: error:")


def test_a_larger_manifest_later_embeds_only_the_new_clips_and_a_no_op_rewrites_nothing(tmp_path):
    data = make_dataset(tmp_path / "src", shots=3, frames=12)
    df = read_manifest(data["manifest"])
    write_manifest(df.iloc[:4], tmp_path / "small.parquet")
    idx = tmp_path / "idx"
    build_index(tmp_path / "small.parquet", idx)
    parts = {p.name: p.read_bytes() for p in (idx / ".parts" / "embed").glob("*.parquet")}
    build_index(data["manifest"], idx)  # a superset of the first manifest
    clips = read_manifest(idx / "clips.parquet")
    assert clips["clip_id"].is_unique and sorted(clips["clip_id"]) == sorted(df["clip_id"])
    assert all((idx / ".parts" / "embed" / name).read_bytes() == b for name, b in parts.items())  # not redone
    written = {p.name: p.stat().st_mtime_ns for p in idx.iterdir() if p.is_file()}
    build_index(data["manifest"], idx)  # nothing new: the index stays as it is
    assert {p.name: p.stat().st_mtime_ns for p in idx.iterdir() if p.is_file()} == written


def test_a_damaged_faiss_file_is_one_line_not_a_traceback(indexed, tmp_path, capsys):
    _, first = indexed
    out = tmp_path / "idx"
    shutil.copytree(first, out)
    (out / "text.faiss").write_bytes(b"\x00" * 64)
    assert search_main([str(out), "--text", "a red square"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the text index is damaged or incomplete" in err[0] and "run index-clips again" in err[0]


def test_an_ivfpq_index_gives_the_flat_index_s_hits_and_search_clips_reads_a_bucket(indexed, tmp_path, s3, capsys):
    data, out = indexed
    pq = tmp_path / "pq"
    assert index_main([str(data["manifest"]), "-o", str(pq), "--index-type", "ivfpq", "--quiet"]) == 0
    meta = json.loads((pq / "index.json").read_text())
    assert meta["visual_index"]["kind"] == meta["text_index"]["kind"] == "ivfpq"
    clips = read_manifest(out / "clips.parquet")
    cid = clips["clip_id"].iloc[4]
    flat, approx = search(out, like=cid, k=2), search(pq, like=cid, k=2)
    np.testing.assert_allclose(approx["score"], flat["score"], rtol=1e-5)  # re-ranked: exact cosine
    assert read_manifest(pq / "clips.parquet")["dup_group"].tolist() == clips["dup_group"].tolist()
    import fsspec
    fs = fsspec.filesystem("s3")
    fs.put(str(pq) + "/", f"{s3}/pq/", recursive=True)
    capsys.readouterr()
    assert search_main([f"{s3}/pq", "--like", cid, "-k", "2"]) == 0
    assert approx["clip_id"].iloc[0] in capsys.readouterr().out
    hits = search(f"{s3}/pq", text=data["captions"][3], k=3)
    assert (hits["caption"] == data["captions"][3]).all()
    assert search_main([f"{s3}/nothing-here", "--like", cid]) == 2
