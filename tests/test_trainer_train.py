"""End to end on CPU: train, kill, `--resume latest`, sample (deterministic, run folders, GIFs, model folders).
Many processes: tests/test_trainer_distributed.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import trainer.train as train_module
from trainer.testing import make_square_manifest

REPO = Path(train_module.__file__).resolve().parents[1]
CONFIG = REPO / "trainer" / "configs" / "tiny.yaml"
OVERRIDES = ["data.buckets=[[4,16,16]]", "data.batch_size=2", "text.max_length=8", "optim.warmup_steps=2",
             "train.ckpt_every=2", "train.log_every=1", "train.keep_last=2", "sample.steps=4"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_square_manifest(tmp_path_factory.mktemp("data"), count=6, frames=4, size=16)


def run(args, timeout=600):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def train_cmd(manifest, out, steps, *extra):
    return [sys.executable, "-m", "trainer.train", "--config", str(CONFIG), "--data", str(manifest),
            "--max-steps", str(steps), "--output-dir", str(out), *extra, *OVERRIDES]


def weights(ckpt: Path, which: str) -> dict:
    return load_file(str(ckpt / which / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def reference_run(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    proc = run(train_cmd(manifest, out, 6))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.slow
def test_kill_and_resume_latest_continues_at_the_same_step_with_the_same_ema(manifest, reference_run, tmp_path):
    out = tmp_path / "killed"
    killed = run(train_cmd(manifest, out, 6, "--kill-at-step", "3"))
    assert killed.returncode == -9  # SIGKILL after step 3: the latest checkpoint is step 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2"]
    ckpt = out / "checkpoints" / "2"  # resume state is tensors (safetensors) and JSON, no custom pickle
    assert (ckpt / "ema" / "diffusion_pytorch_model.safetensors").exists() and not list(ckpt.glob("custom_checkpoint_*"))
    resumed = run(train_cmd(manifest, out, 6, "--resume", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at step 2" in resumed.stdout + resumed.stderr
    ref_ckpts = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    assert ref_ckpts == ["4", "6"] == sorted(p.name for p in (out / "checkpoints").iterdir())  # keep_last=2
    for which in ("ema", "model"):
        a, b = weights(reference_run / "checkpoints" / "6", which), weights(out / "checkpoints" / "6", which)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6), (which, k)
    ema, raw = weights(out / "checkpoints" / "6", "ema"), weights(out / "checkpoints" / "6", "model")
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # the EMA is a separate average
    logged = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]  # step 3, logged before the kill and run again, is there once


@pytest.mark.slow
def test_later_checkpoints_of_another_run_are_not_mixed_in(manifest, tmp_path):
    out = tmp_path / "run"
    first = run(train_cmd(manifest, out, 4, "diffusion.name=ddpm", "train.mixed_precision=no"))
    assert first.returncode == 0, first.stderr[-2000:]  # (the rflow keys of tiny.yaml do not stop ddpm)
    logged = (out / "metrics.jsonl").read_text()
    again = run(train_cmd(manifest, out, 4, "--resume", str(out / "checkpoints" / "2"), "diffusion.name=ddpm"))
    assert again.returncode != 0 and "past step 2 (4)" in again.stderr
    assert (out / "metrics.jsonl").read_text() == logged  # a refused run changes nothing
    branch = run(train_cmd(manifest, tmp_path / "branch", 4, "--resume", str(out / "checkpoints" / "2"),
                           "diffusion.name=ddpm", "train.keep_last=1"))
    assert branch.returncode == 0, branch.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "branch" / "checkpoints").iterdir()) == ["4"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2", "4"]  # the first run is untouched


@pytest.mark.slow
def test_sample_is_deterministic_for_a_seed(reference_run, tmp_path):
    from index.video import probe, read_frames
    from trainer.sample import main as sample_main

    ckpt = reference_run / "checkpoints" / "6"
    common = ["--ckpt", str(ckpt), "--prompt", "a red square moving left", "--num-frames", "4", "--height", "16",
              "--width", "16", "--steps", "3", "--cfg-scale", "2.0"]
    assert sample_main(common + ["--seed", "3", "-o", str(tmp_path / "a.mp4")]) == 0
    assert sample_main(common + ["--seed", "3", "-o", str(tmp_path / "b.mp4")]) == 0
    assert sample_main(common + ["--seed", "4", "-o", str(tmp_path / "c.mp4")]) == 0
    info = probe(tmp_path / "a.mp4")
    assert (info.width, info.height, info.num_frames) == (16, 16, 4)
    a, b, c = (read_frames(tmp_path / f"{n}.mp4", range(4)) for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert sample_main(["--ckpt", str(tmp_path), "--prompt", "x", "-o", str(tmp_path / "d.mp4")]) == 2


SMALL = ["--prompt", "a red square moving left", "--num-frames", "4", "--height", "16", "--width", "16",
         "--steps", "2"]


@pytest.mark.slow
def test_sample_finds_checkpoints_and_checks_its_output_first(reference_run, tmp_path, capsys):
    from PIL import Image

    from trainer.sample import main as sample_main

    assert sample_main(["--ckpt", str(reference_run), *SMALL, "-o", str(tmp_path / "run.gif")]) == 0
    assert f"sampling {reference_run / 'checkpoints' / '6' / 'ema'}" in capsys.readouterr().err  # the latest
    with Image.open(tmp_path / "run.gif") as gif:  # a real GIF, not mp4 bytes under a .gif name
        assert gif.format == "GIF" and gif.n_frames == 4 and gif.size == (16, 16)
    missing = reference_run / "checkpoints" / "5"
    assert sample_main(["--ckpt", str(missing), *SMALL, "-o", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"sample: error: {missing}: no such checkpoint; {reference_run} has checkpoints 4, 6 "
                   f"(latest: {reference_run / 'checkpoints' / '6'})")
    (tmp_path / "afile").write_text("x")
    for out, message in ((tmp_path / "afile" / "x.mp4", "is a file, not a folder"),
                         (tmp_path / "x.avi", "must end in .mp4 or .gif"), (tmp_path, "must end in")):
        assert sample_main(["--ckpt", str(missing), *SMALL, "-o", str(out)]) == 2  # before the checkpoint
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    for flag, value in (("--fps", "nan"), ("--fps", "inf"), ("--cfg-scale", "nan")):  # not a NaN video
        assert sample_main(["--ckpt", str(reference_run), *SMALL, flag, value, "-o", str(tmp_path / "n.mp4")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"sample: error: {flag} must be") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "n.mp4").exists()


@pytest.mark.slow
def test_sample_a_model_folder_with_a_config(reference_run, tmp_path, capsys):
    import shutil

    from trainer.sample import main as sample_main

    ckpt = reference_run / "checkpoints" / "6"
    folder = tmp_path / "converted"
    shutil.copytree(ckpt / "ema", folder)  # a bare model folder, as python -m trainer.convert writes
    assert sample_main(["--ckpt", str(folder), *SMALL, "-o", str(tmp_path / "x.mp4")]) == 2
    assert "without a training config: pass --config" in capsys.readouterr().err
    assert sample_main(["--ckpt", str(folder), "--config", str(ckpt / "config.yaml"), "--text-encoder",
                        str(ckpt / "text_encoder"), "--cfg-channels", "2", *SMALL, "-o", str(tmp_path / "x.mp4")]) == 0
    assert (tmp_path / "x.mp4").stat().st_size > 0


def test_every_option_has_help_and_help_shows_defaults():
    from trainer.sample import build_parser as sample_parser
    from trainer.train import build_parser as train_parser

    for parser in (sample_parser(), train_parser()):
        assert all(a.help for a in parser._actions), [a.dest for a in parser._actions if not a.help]
        assert "(default:" in parser.format_help()
    assert "noise seed: the same seed gives the same video (default: 0)" in " ".join(sample_parser().format_help().split())


def test_bad_usage_is_a_clear_error(tmp_path, capsys):
    assert train_module.main(["--config", str(CONFIG), "--output-dir", str(tmp_path)]) == 2
    assert "no training data" in capsys.readouterr().err
    assert train_module.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "no such config" in capsys.readouterr().err
    assert train_module.main(["--config", str(CONFIG), "lr=3"]) == 2
    assert "expected section.key=value" in capsys.readouterr().err


@pytest.mark.slow
def test_metrics_log_the_lr_and_the_gradient_norm_of_every_logged_step(reference_run):
    lines = [json.loads(ln) for ln in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]
    assert [m["lr"] for m in lines[:2]] == pytest.approx([1.5e-4, 3e-4])  # tiny.yaml: warm-up over 2 steps
    assert lines[-1]["lr"] == pytest.approx(0.0, abs=1e-12) and lines[2]["lr"] > lines[3]["lr"]  # cosine to 0
    for m in lines:
        assert 0 < m["grad_norm"] == m["grad_norm_max"] < 1e3 and m["spike"] is False  # one step per line


def test_a_loss_far_above_its_running_median_is_a_spike():
    from trainer.checkpoints import SpikeWatch

    falling = [0.6 * 0.97 ** k * (1.2 if k % 3 else 0.85) for k in range(110)]  # noisy, falling to ~0.025
    watch = SpikeWatch(3.0)
    assert [watch.check(v) for v in falling] == [None] * 110
    median = sorted(falling[-20:])[9:11]
    assert watch.check(2.9 * max(median)) is None  # under 3x: noise
    assert "5.0x the median" in watch.check(5.0 * sum(median) / 2)
    assert SpikeWatch(3.0, history=falling).check(0.145) is not None  # a resumed run keeps its history
    assert SpikeWatch(3.0).check(float("nan")) == "the loss is nan"
    assert SpikeWatch(0.0, history=falling).check(100.0) is None  # spike_factor 0: never


@pytest.mark.slow
def test_a_spike_is_warned_with_its_step_and_flagged_in_the_metrics(manifest, tmp_path):
    out = tmp_path / "spiky"  # a factor of 1e-6: every logged loss after the first 5 counts as a spike
    proc = run(train_cmd(manifest, out, 7, "train.spike_factor=1e-6"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    warned = [ln for ln in proc.stderr.splitlines() if "warning: loss spike" in ln]
    assert [ln.split("at step ")[1].split(":")[0] for ln in warned] == ["6", "7"], warned
    assert "grad norm" in warned[0] and "lr " in warned[0]
    flags = [json.loads(ln)["spike"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert flags == [False] * 5 + [True, True]
