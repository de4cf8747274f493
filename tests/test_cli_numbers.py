"""Numbers on a command line: NaN, infinity, zero or a negative where none makes sense is one line and exit
status 2 before any work, and leaves no output behind (found by typing them into every command)."""

from __future__ import annotations

import shutil

import pytest

from test_captioner_cli import manifest_from_ranges


@pytest.fixture(scope="module")
def manifest(sample_videos, tmp_path_factory):
    folder, truths = sample_videos
    dst = tmp_path_factory.mktemp("numbers") / "clips.parquet"
    manifest_from_ranges({folder / name: t.shots[:1] for name, t in truths.items()}, dst)
    index = dst.parent / "idx"
    index.mkdir()
    shutil.copy(dst, index / "clips.parquet")  # enough of an index folder for search-clips' own checks
    return dst


def _main(name):
    from captioner.cli import main as caption
    from index.dedup.cli import index_main, search_main
    from index.shards.cli import shards_main
    from scorer.cli import main as score
    from splitter.cli import main as split

    return {"split-videos": split, "caption-videos": caption, "score-clips": score, "index-clips": index_main,
            "search-clips": search_main, "build-shards": shards_main}[name]


CASES = [
    ("split-videos", ["--min-sec", "nan"], "--min-sec must be a number >= 0, got nan"),
    ("split-videos", ["--max-sec", "nan"], "--max-sec must be a number >= 0 (0: no limit), got nan"),
    ("caption-videos", ["--sample-fps", "nan"], "--sample-fps must be a positive number, got nan"),
    ("caption-videos", ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ("caption-videos", ["--max-pixels", "0"], "--max-pixels must be at least 1, got 0"),
    ("caption-videos", ["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    ("caption-videos", ["--sample-fps", "1", "--max-frames", "0"], "--max-frames must be at least 1"),
    ("score-clips", ["--sample-fps", "inf"], "--sample-fps must be a positive number, got inf"),
    ("index-clips", ["--threshold", "nan"], "--threshold is a cosine similarity"),
    ("index-clips", ["--threshold", "-0.5"], "--threshold is a cosine similarity"),
    ("index-clips", ["--threshold", "2"], "--threshold is a cosine similarity"),
    ("index-clips", ["--frames", "0"], "--frames must be at least 1, got 0"),
    ("build-shards", ["--shard-size", "0"], "--shard-size: size '0' must be at least one byte"),
    ("build-shards", ["--fps", "inf"], "--fps must be a positive number, not inf"),
    ("search-clips", ["--text", "cat", "-k", "0"], "-k must be at least 1, got 0"),
    ("search-clips", ["--text", " "], "--text is empty"),
]


@pytest.mark.parametrize("prog,extra,message", CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_a_number_that_makes_no_sense_is_one_line_before_any_work(manifest, sample_videos, tmp_path, capsys,
                                                                  monkeypatch, prog, extra, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    first = {"split-videos": [str(sample_videos[0])], "search-clips": [str(manifest.parent / "idx")]}.get(
        prog, [str(manifest)])
    argv = first + ([] if prog == "search-clips" else ["-o", str(out)]) + extra
    if prog == "caption-videos":
        argv += ["--model", "qwen-vl"]  # an alias: its weights are never needed for these checks
    assert _main(prog)(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{prog}: error: {err[0].split('error: ', 1)[1]}"] and message in err[0], err
    assert not out.exists()
