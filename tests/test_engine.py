"""The one engine: the same parts whatever runs the units (this process, N worker processes; Ray in
test_engine_ray.py), bad input recorded, a bug stops the run and records nothing, a dying worker fails only
its unit, Ctrl-C is one line and exit code 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from index.engine import DIED, BadInput, EngineOptions, Output, Stage, Unit, run_stage
from index.manifest import PartStore, read_manifest

ROOT = Path(__file__).resolve().parents[1]


class Toy(Stage):
    """Units are items; 'bad' is bad input, 'bug' a bug, 'die' kills its worker; the state is the worker's pid."""

    name = "toy"

    def __init__(self, items):
        self.items = items

    def units(self):
        return [Unit(f"u{x}", f"src/{x}", x) for x in self.items]

    def load(self):
        return os.getpid()

    def process(self, pid, unit):
        x = unit.data
        if x == "bad":
            raise BadInput("this unit is\nbad")
        if x == "bug":
            raise KeyError("a bug in process")
        if x == "die":
            os._exit(1)  # a decoder segfault, the OOM killer
        return Output(pd.DataFrame({"clip_id": [f"c{x}"], "twice": [2 * x], "pid": [pid]}),
                      failures=[(f"c{x}-frame", "a clip of this unit")] if x == 4 else [])

    def merge(self, store):
        return store.merge(sort_by=("clip_id",))


def run(tmp_path, items, **options):
    store = PartStore(tmp_path, "toy")
    report = run_stage(Toy(items), store, EngineOptions(progress=False, **options))
    df, fails = store.merge(sort_by=("clip_id",))
    return report, df, fails


@pytest.mark.parametrize("workers", [1, 2])
def test_same_parts_and_failures_whatever_runs_the_units(tmp_path, workers):
    report, df, fails = run(tmp_path / "a", [1, 2, "bad", 3, 4, 5], workers=workers)
    assert df["clip_id"].tolist() == ["c1", "c2", "c3", "c4", "c5"] and df["twice"].tolist() == [2, 4, 6, 8, 10]
    assert fails == [{"path": "src/4", "stage": "toy", "reason": "clip c4-frame: a clip of this unit"},
                     {"path": "src/bad", "stage": "toy", "reason": "this unit is bad"}]  # one line, no type name
    assert (report.units, report.done, report.failed) == (6, 6, 1)
    pids = set(df["pid"])
    if workers == 1:
        assert pids == {os.getpid()}
    else:  # the units ran in worker processes, each of which loaded its state once
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
    again, _, _ = run(tmp_path / "a", [1, 2, "bad", 3, 4, 5], workers=workers)
    assert (again.skipped, again.done) == (6, 0)  # a re-run finds every unit done (the failure too)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bug_stops_the_run_with_its_traceback_and_marks_nothing_failed(tmp_path, workers):
    with pytest.raises(KeyError, match="a bug in process"):
        run(tmp_path, [1, "bug", 2, 3], workers=workers)
    store = PartStore(tmp_path, "toy")
    assert not store.done("ubug")  # fixing the code and re-running redoes the unit
    assert not list(store.dir.glob("*.failed.json"))


def test_a_dying_worker_fails_only_its_unit(tmp_path):
    report, df, fails = run(tmp_path, [1, "die", 2, 3], workers=2)
    assert df["clip_id"].tolist() == ["c1", "c2", "c3"]
    assert fails == [{"path": "src/die", "stage": "toy", "reason": DIED}] and report.failed == 1


def test_progress_is_a_steady_line_when_output_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SHOTCAP_PROGRESS_INTERVAL", "0")
    run_stage(Toy([1, 2, 3]), PartStore(tmp_path, "toy"), EngineOptions())
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("toy: 1/3 units (33%)") and "/s, ETA" in lines[0]
    assert lines[-1].startswith("toy: 3/3 units (100%)")


def _videos(raw: Path, n: int) -> None:
    from index import synth

    raw.mkdir()
    for i in range(n):
        shots, trans = synth.sample_layout(300 + i, seconds=4.0)
        synth.make_video(raw / f"v{i}.mp4", shots, trans, size=(96, 64))


@pytest.mark.slow
@pytest.mark.parametrize("presses", [1, 2, "held"])
def test_ctrl_c_is_one_line_and_exit_code_130_and_keeps_what_was_done(tmp_path, presses):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _videos(raw, 6)
    cmd = [sys.executable, "-m", "splitter.cli", str(raw), "-o", str(out), "--workers", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHOTCAP_FLUSH_SECONDS": "0"}  # a batch per finished video
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts = out / ".parts" / "split"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(parts.glob("*.parquet")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before Ctrl-C"
    for _ in range(presses if presses != "held" else 10**9):  # held: Ctrl-C repeats until the process is gone
        if proc.poll() is not None or time.time() > deadline:
            break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05 if presses != "held" else 0.005)
    _, err = proc.communicate(timeout=60)  # a second Ctrl-C never hangs it, nor breaks its exit
    assert proc.returncode == 130
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("split-videos: interrupted: ")
    assert "run the same command again to resume" in err
    kept = len(list(parts.glob("*.parquet")))
    assert kept >= 1
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and f"already done {kept}" in done.stderr


def test_split_gives_the_same_manifest_with_one_or_two_workers(sample_videos, tmp_path):
    from splitter.pipeline import split_videos

    raw, _ = sample_videos
    one, fails_one = split_videos(raw, tmp_path / "one", detector="content", progress=False)
    two, fails_two = split_videos(raw, tmp_path / "two", detector="content", workers=2, progress=False)
    one, two = read_manifest(one), read_manifest(two)
    assert len(one) > 2 and fails_one == fails_two
    pd.testing.assert_frame_equal(one, two)
    assert (tmp_path / "one" / "clips.parquet").read_bytes() == (tmp_path / "two" / "clips.parquet").read_bytes()


def test_after_ctrl_c_a_command_line_run_ignores_more_but_a_python_caller_keeps_its_handler():
    from index.engine import ctrl_c_guard, ignore_ctrl_c

    def handler(signum, frame):
        pass

    previous = signal.signal(signal.SIGINT, handler)
    try:
        ignore_ctrl_c()  # a stage run as a function (a notebook): its kernel must stay interruptible
        with ctrl_c_guard(["--some-flag"]):  # a command's main called from Python with its own argv
            ignore_ctrl_c()
        assert signal.getsignal(signal.SIGINT) is handler
        with ctrl_c_guard(None):  # the command line's argv: exiting, further presses stay ignored
            ignore_ctrl_c()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
