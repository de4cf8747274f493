"""What a build ships and what it says: flagged captions, filters, dedup on by default, the summary line and
the data card (front matter, retention table, flags, upstream failures, per-format files, figures)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from huggingface_hub import DatasetCard

from index.manifest import read_manifest, write_manifest, write_provenance
from index.shards.cli import shards_main
from test_shards_data import make_shards_dataset, scores  # noqa: F401  (scores: a fixture)

WHERE = "aesthetic >= 4 and camera_motion != 'shaky'"


@pytest.fixture
def source(tmp_path, scores):  # noqa: F811
    """The dataset with scores, two flagged captions, one empty caption, a model column, and the folder of an
    upstream split run (its options and one failed source)."""
    data = make_shards_dataset(tmp_path / "src", shots=3, frames=16, with_scores=True)
    df = read_manifest(data["manifest"])
    other = df.index[df["video_path"].str.endswith("other.mp4")]
    df.loc[other[0], "caption_flags"] = "truncated"
    df.loc[other[1], "caption_flags"] = "loop,truncated"
    df.loc[df.index[df["video_path"].str.endswith("resized.mp4")][0], "caption"] = ""
    df["caption_model"], df["prompt_id"] = "tiny-vlm", "describe_v1"
    df.loc[other, "aesthetic"] = 6.0  # the flags, not the filters, decide these two
    write_manifest(df, data["manifest"])
    split = data["folder"] / "split"  # the split step's own folder, named in the manifest's provenance.json
    write_provenance(split, "split", {"detector": "transnetv2", "detector_options": {"threshold": 0.5},
                                      "min_sec": 0.5, "max_sec": 10})
    write_provenance(data["folder"], "caption", {"model": "tiny-vlm"}, source=split)
    (split / "failed.jsonl").write_text(json.dumps({"path": "raw/broken.mp4", "stage": "split",
                                                    "reason": "undecodable frames (invalid data)"}) + "\n")
    return data, df


def expected(df: pd.DataFrame, allow=()) -> dict:
    """The documented order computed by hand: captions, flags, --where, --keep-top motion:0.9, then one clip
    per duplicate group (shot s of original, copy, resized), an original or copy first (longer clips)."""
    failed = df["caption"].str.strip() == ""
    flags = df["caption_flags"].fillna("").map(lambda v: {f for f in v.split(",") if f})
    flagged = ~failed & flags.map(lambda s: bool(s - set(allow)))
    left = df[~failed & ~flagged]
    passed = left[(left["aesthetic"] >= 4) & (left["camera_motion"] != "shaky")]
    top = passed.assign(neg=-passed["motion"]).sort_values(["neg", "clip_id"]).head(math.ceil(0.9 * len(passed)))
    exact = near = 0
    shot = {}
    for path in ("original.mp4", "copy.mp4", "resized.mp4"):
        rows = df[df["video_path"].str.endswith(path)].sort_values("start_frame")
        shot.update({c: (k, path) for k, c in enumerate(rows["clip_id"])})
    survivors = [shot[c] for c in top["clip_id"] if c in shot]
    for s in {k for k, _ in survivors}:
        kinds = [p for k, p in survivors if k == s]
        full = [p for p in kinds if p != "resized.mp4"]
        exact += max(0, len(full) - 1)
        near += int("resized.mp4" in kinds and bool(full))
    return {"failed": int(failed.sum()), "flagged": int(flagged.sum()), "filtered": len(left) - len(top),
            "exact copy": exact, "near duplicate": near, "kept": len(top) - exact - near}


def test_dedup_by_default_flags_filters_summary_and_card(source, tmp_path, capsys):
    data, df = source
    out = tmp_path / "out"
    assert shards_main([str(data["manifest"]), "-o", str(out), "--where", WHERE, "--keep-top", "motion:0.9",
                        "--format", "folder", "--name", "curated"]) == 0
    want = expected(df)
    assert want["exact copy"] and want["near duplicate"] and want["flagged"] == 2 and want["filtered"]
    index = pd.read_parquet(out / "index.parquet")
    assert len(index) == want["kept"] and (out / "index" / "clips.parquet").exists()  # the index it built
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("build-shards:")][-1]
    assert f"{want['kept']} clips" in line and "as folder" in line
    for kind in ("failed", "flagged", "filtered", "exact copy", "near duplicate"):
        assert re.search(rf"\b{want[kind]} {kind}\b", line), (kind, line)
    assert "2 flagged (loop 1, truncated 2 dropped)" in line  # per flag: 'loop,truncated' counts for both

    card = DatasetCard.load(out / "DATA_CARD.md")
    assert card.data.pretty_name == "curated" and card.data.configs[0]["data_files"][0]["path"] == [
        "videos/*.mp4", "metadata.jsonl"]
    text = card.text
    assert "*.tar" not in text and "webdataset" not in text.lower().split("## files")[1]
    steps = re.findall(r"^\| (\d+) \| ([a-z ]+) \| (.+?) \| (\d+) \| (\d+) \| ([\d.]+) \|$", text, re.M)
    conditions = [c for _, _, c, _, _, _ in steps]
    assert conditions.index("aesthetic >= 4") < conditions.index('camera_motion != "shaky"') < next(
        k for k, c in enumerate(conditions) if c.startswith("top 90% by motion"))
    assert int(steps[-1][4]) == len(index) and sum(int(s[3]) for s in steps) == len(df) - len(index)
    assert "| truncated | 2 | 0 |" in text and "| loop | 1 | 0 |" in text
    assert "| split | undecodable frames | 1 |" in text  # sources that failed upstream
    assert "`transnetv2` (threshold=0.5)" in text and "| caption model | tiny-vlm |" in text
    assert "| caption prompt (prompt_id) | describe_v1 |" in text
    assert re.search(r"\| aesthetic \| \d+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| aesthetic >= 4 \|", text)
    for png in ("score_aesthetic", "score_motion", "camera_motion", "similarity"):
        assert (out / "card" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_allow_flags_and_no_dedup(source, tmp_path, capsys):
    data, df = source
    out = tmp_path / "out"
    assert shards_main([str(data["manifest"]), "-o", str(out), "--no-dedup", "--allow-flags", "truncated"]) == 0
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("build-shards:")][-1]
    # 'truncated' alone is kept; 'loop,truncated' has a flag not allowed
    assert "1 flagged (loop 1, truncated 1 dropped; truncated 1 kept)" in line and "duplicate" not in line
    assert not (out / "index").exists()
    index = pd.read_parquet(out / "index.parquet")
    assert len(index) == len(df) - 2 and index["caption_flags"].eq("truncated").sum() == 1
    text = (out / "DATA_CARD.md").read_text()
    assert "| truncated | 1 | 1 |" in text and "Not deduplicated" in text and "| shards |" in text


def test_the_similarity_histogram_counts_the_cards_clips(source, tmp_path):
    from index.dedup.cli import build_index
    from index.shards.card import card_similarities

    data, df = source
    build_index(data["manifest"], tmp_path / "idx")
    kept = df["clip_id"].iloc[:5]
    sims = card_similarities(tmp_path / "idx", kept)
    assert len(sims) == 5 < len(df)
    vis = np.load(tmp_path / "idx" / "visual.npy")
    ids = pd.read_parquet(tmp_path / "idx" / "clips.parquet")["clip_id"]
    x = vis[ids.isin(kept).to_numpy()]
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    assert np.allclose(np.sort(sims), np.sort(np.clip(s.max(axis=1), -1, 1)), atol=1e-5)


def test_opensora_csv_card_speaks_of_its_own_files(source, tmp_path):
    data, _ = source
    out = tmp_path / "csv"
    assert shards_main([str(data["manifest"]), "-o", str(out), "--no-dedup", "--format", "opensora-csv"]) == 0
    text = (out / "DATA_CARD.md").read_text()
    files = [out / "opensora.csv", *(out / "clips").glob("*.mp4")]
    assert "*.tar" not in text and "| shards |" not in text and "opensora.csv" in text
    assert f"| clip files | {len(files) - 1} |" in text
    size = sum(f.stat().st_size for f in files)
    assert size < 1e6 and f"| size on disk | {size / 1e3:.1f} KB |" in text


def test_histograms_span_the_data_and_count_in_whole_clips():
    from index.shards.plots import _bins, _plt, histogram_figure

    edges = _bins(np.array([0.31, 0.47, 0.52]))
    assert edges[0] == 0.31 and edges[-1] == 0.52  # the data's range, not -1..1
    edges = _bins(np.array([3, 7, 12]), integer=True)
    assert edges[0] == 2.5 and edges[-1] >= 12.5 and np.allclose(edges % 1, 0.5)  # one bin per whole word count
    fig = histogram_figure([5, 6, 6], "caption length (words)", integer=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear"
    assert all(float(t).is_integer() for t in ax.get_yticks()) and all(float(t).is_integer() for t in ax.get_xticks())
    _plt().close(fig)


def test_a_rewritten_card_keeps_the_compute_section_plan_wrote(source, tmp_path):
    from pathlib import Path

    from index.shards.card import COMPUTE_END, COMPUTE_START

    plan_py = (Path(__file__).resolve().parents[1] / "plan.py").read_text()
    assert f'"{COMPUTE_START}", "{COMPUTE_END}"' in plan_py  # the markers `plan --card` writes
    data, _ = source
    out = tmp_path / "out"
    args = [str(data["manifest"]), "-o", str(out), "--no-dedup", "--format", "folder"]
    assert shards_main([*args, "--name", "first"]) == 0
    card = out / "DATA_CARD.md"
    assert COMPUTE_START not in card.read_text()
    section = f"{COMPUTE_START}\n## Compute\n\n| config | GPU-hours |\n|---|---|\n| stage1 | 12.5 |\n\n{COMPUTE_END}"
    card.write_text(card.read_text().rstrip("\n") + "\n\n" + section + "\n")  # as plan --card appends it
    assert shards_main([*args, "--name", "second"]) == 0
    text = card.read_text()
    assert "pretty_name: second" in text and text.count(COMPUTE_START) == 1 and section in text
