"""The benchmarks' shared rule: alternating repeats, medians, spreads and per-repeat ratios."""

import importlib.util
import sys
from pathlib import Path

import pytest

# loaded from its file: putting bench/ on sys.path would let bench/captioner.py and bench/scorer.py shadow the
# captioner and scorer packages for every test collected after this one
_spec = importlib.util.spec_from_file_location("_stats", Path(__file__).resolve().parents[1] / "bench" / "_stats.py")
_stats = sys.modules["_stats"] = importlib.util.module_from_spec(_spec)  # registered first, for its dataclasses
_spec.loader.exec_module(_stats)
interleave, per_repeat, repeats_note, spread = _stats.interleave, _stats.per_repeat, _stats.repeats_note, _stats.spread


def test_interleave_alternates_which_side_goes_first():
    calls = []
    runs = interleave(4, {"base": lambda: calls.append("base") or len(calls),
                          "ours": lambda: calls.append("ours") or len(calls)})
    assert calls == ["base", "ours", "ours", "base", "base", "ours", "ours", "base"]
    assert runs == {"base": [1, 4, 5, 8], "ours": [2, 3, 6, 7]}


def test_interleave_refuses_no_repeats():
    with pytest.raises(ValueError, match="at least 1"):
        interleave(0, {"a": lambda: 1})


def test_spread_is_median_and_range():
    s = spread([3.0, 1.0, 10.0])
    assert (s.median, s.lo, s.hi) == (3.0, 1.0, 10.0)
    assert s.text("{:.1f}", " s") == "3.0 s (1.0-10.0)"
    assert spread([2.5]).text() == "2.50"  # one run: no range to print
    assert s.rel == pytest.approx(3.0)


def test_ratio_pairs_the_runs_of_one_repeat():
    # a slow moment in repeat 2 hits both sides of it: each repeat's ratio is taken on its own
    r = per_repeat([2.0, 8.0, 3.0], [1.0, 4.0, 2.0])
    assert sorted(r.values) == [1.5, 2.0, 2.0]
    assert (r.median, r.lo, r.hi) == (2.0, 1.5, 2.0)
    with pytest.raises(ValueError, match="pairs the runs"):
        per_repeat([1.0, 2.0], [1.0])


def test_repeats_note_says_when_there_is_no_spread():
    assert "no spread" in repeats_note(1)
    assert repeats_note(3) == "median (min-max) over 3 repeats, the sides alternating"
    assert repeats_note(3, alternating=False) == "median (min-max) over 3 repeats"
