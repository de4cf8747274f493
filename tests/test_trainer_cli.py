"""train.py as a user meets it, in-process on CPU: checked config and paths (one line, exit 2, nothing built or
written), the output-folder lock, metrics.jsonl after kills and torn lines, Ctrl-C, --init-from."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import trainer.train as train_module
from index.files import OutputLock
from trainer.config import ConfigError, load_config
from trainer.model import STDiT, build_stdit
from trainer.testing import make_square_manifest

REPO = Path(train_module.__file__).resolve().parents[1]
CONFIG = REPO / "trainer" / "configs" / "tiny.yaml"
BASE = ["data.buckets=[[4,16,16]]", "data.batch_size=2", "text.max_length=8", "optim.warmup_steps=2",
        "train.ckpt_every=2", "train.log_every=1", "train.keep_last=2"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_square_manifest(tmp_path_factory.mktemp("data"), count=4, frames=4, size=16)


def train(manifest, out, steps, *extra):
    return train_module.main(["--config", str(CONFIG), "--data", str(manifest), "--max-steps", str(steps),
                              "--output-dir", str(out), *extra, *BASE])


def steps_logged(out: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict:
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


# ---------------------------------------------------------------- config

def test_config_keys_and_types_are_checked():
    cfg = load_config(CONFIG, ["optim.lr=3e-4", "train.max_steps=1e3"])
    assert cfg["optim"]["lr"] == 3e-4 and isinstance(cfg["optim"]["lr"], float)  # YAML reads 3e-4 as a string
    assert cfg["train"]["max_steps"] == 1000 and isinstance(cfg["train"]["max_steps"], int)
    assert "optim.lr" in cfg.explicit and "optim.eps" not in cfg.explicit
    cases = {"optim.lrr=1": "unknown config key optim.lrr (did you mean optim.lr?)",
             "train.lr=1": "unknown config key train.lr (did you mean optim.lr?)",
             "optm.lr=1": "unknown config section 'optm' (did you mean optim?)",
             "data.batch_size=2.5": "data.batch_size: expected an integer",
             "train.mixed_precision=fp8": "train.mixed_precision: 'fp8' is not one of no, bf16, fp16",
             "optim.lr=fast": "optim.lr: expected a number",
             "model.size=STDiT-XL/3": "did you mean STDiT-XL/2?",
             "vae.pth=x": "unknown config key vae.pth for vae.kind=pixels",
             "vae.kind=sd-vae": "vae.path is required for vae.kind=sd-vae",
             "data.batch_size=0": "data.batch_size: must be > 0",
             "model.gradient_checkpointing=yes please": "expected true or false"}
    for item, message in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(CONFIG, [item])
        assert message in str(err.value), item


def test_a_user_mistake_is_one_line_before_anything_is_built_or_written(manifest, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "noshards").mkdir()
    from index.shards.build import write_state
    from index.shards.stage import ClipOptions

    write_state(tmp_path / "musubi", "musubi", ClipOptions(), ["videos/a.mp4", "videos/a.txt"])  # another export

    def argv(*extra, data=manifest, output=out):
        return ["--config", str(CONFIG), "--data", str(data), "--output-dir", str(output), *extra, *BASE]

    cases = [(argv("optim.lrr=1"), "did you mean optim.lr?"),
             (argv(data=tmp_path / "missing.parquet"), "no such file or folder"),
             (argv(data=tmp_path / "noshards"), "no *.tar shards"),
             (argv(data=tmp_path / "musubi"), "holds a musubi export, made for another trainer"),
             (argv(output=afile / "run"), "is a file, not a folder"),
             (argv("--init-from", str(tmp_path / "nothing")), "no such checkpoint"),
             (argv("--resume", str(out / "checkpoints" / "9")), "no such checkpoint"),
             (argv("text.kind=t5", "text.path=./not/a/folder"), "text.path ./not/a/folder: no such folder"),
             (argv("text.kind=t5", "text.path=nobody/no-such-model"), "hf download nobody/no-such-model"),
             (argv("--max-steps", "0"), "train.max_steps: must be > 0")]
    for args, message in cases:
        assert train_module.main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, (args, err)
        assert not out.exists(), args  # no run folder, no text encoder, no lock left behind


def test_resolved_config_is_printed_and_saved_beside_the_checkpoints(manifest, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(manifest, out, 2, "optim.lr=3e-4") == 0
    printed = capsys.readouterr().out
    assert "lr: 0.0003" in printed and "output_dir: " + str(out) in printed
    for path in (out / "config.yaml", out / "checkpoints" / "2" / "config.yaml"):
        saved = yaml.safe_load(path.read_text())
        assert saved["optim"]["lr"] == 3e-4 and saved["data"]["buckets"] == [[4, 16, 16]]
        assert load_config(path)["optim"]["lr"] == 3e-4  # a saved config is a valid config


# ---------------------------------------------------------------- one run per folder, metrics, Ctrl-C

def test_a_second_trainer_on_the_same_folder_is_refused(manifest, tmp_path, capsys):
    out = tmp_path / "run"
    with OutputLock(out, "train --config first.yaml"):
        assert train(manifest, out, 2) == 2
    err = capsys.readouterr().err.strip()
    assert "in use by another run (train --config first.yaml" in err and len(err.splitlines()) == 1
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    assert train(manifest, out, 2) == 0  # free again once the first run is over


def test_killed_before_the_first_checkpoint_then_run_again_logs_each_step_once(manifest, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-m", "trainer.train", "--config", str(CONFIG), "--data", str(manifest),
                             "--max-steps", "4", "--output-dir", str(out), "--kill-at-step", "1", *BASE],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert steps_logged(out) == [1] and not (out / "checkpoints").exists()
    assert train(manifest, out, 4, "--resume", "latest") == 0
    assert steps_logged(out) == [1, 2, 3, 4]


def test_a_torn_last_metrics_line_does_not_block_resume(manifest, tmp_path):
    out = tmp_path / "run"
    assert train(manifest, out, 2) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.4')  # killed while writing step 3's line
    assert train(manifest, out, 4, "--resume", "latest") == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [1, 2, 3, 4]


def test_ctrl_c_says_what_was_kept_and_how_to_resume(manifest, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(manifest, out, 6, "--interrupt-at-step", "3") == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"train: interrupted at step 3: kept checkpoint {out / 'checkpoints' / '2'}; continue with "
                       "the same command and --resume latest")
    assert train(manifest, tmp_path / "early", 6, "--interrupt-at-step", "1") == 130
    assert "before the first checkpoint: nothing kept" in capsys.readouterr().err
    assert train(manifest, out, 4, "--resume", "latest") == 0
    assert steps_logged(out) == [1, 2, 3, 4]


# ---------------------------------------------------------------- --init-from

def tiny_folder(path: Path, **kw) -> Path:
    """A converted-model folder that fits tiny.yaml's encoders (pixels: 3 channels; the tiny T5: 32)."""
    torch.manual_seed(5)
    params = dict(in_channels=3, caption_channels=32, model_max_length=16, patch_size=(1, 4, 4))
    params.update(kw)
    build_stdit("STDiT-T/2", **params).save_pretrained(path)
    return path


def test_init_from_a_folder_takes_its_weights_and_unset_keys_and_the_run_wins_for_its_own(manifest, tmp_path):
    folder = tiny_folder(tmp_path / "converted", mlp_ratio=2.0, space_scale=0.5, time_scale=2 / 3)
    out = tmp_path / "run"
    assert train(manifest, out, 1, "--init-from", str(folder), "optim.lr=0", "model.class_dropout_prob=0") == 0
    got = weights(out / "checkpoints" / "1" / "model")  # lr 0: still the initial weights
    want = weights(folder)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    config = STDiT.load_config(str(out / "checkpoints" / "1" / "model"))
    assert config["mlp_ratio"] == 2.0  # tiny.yaml does not set it: the weights' value
    assert config["space_scale"] == 1.0 and config["time_scale"] == 1.0  # tiny.yaml sets them: the run's
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["mlp_ratio"] == 2.0
    assert steps_logged(out) == [1]
    assert json.loads((out / "checkpoints" / "1" / "resume_state.json").read_text())["train"]["step"] == 1


def test_init_from_a_run_folder_uses_its_latest_ema(manifest, tmp_path):
    first = tmp_path / "first"
    assert train(manifest, first, 2) == 0
    second = tmp_path / "second"
    assert train(manifest, second, 1, "--init-from", str(first), "optim.lr=0") == 0
    got, want = weights(second / "checkpoints" / "1" / "model"), weights(first / "checkpoints" / "2" / "ema")
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_init_from_an_opensora_file_converts_it(manifest, tmp_path):
    model = build_stdit("STDiT-T/2", in_channels=3, caption_channels=32, model_max_length=16, patch_size=(1, 4, 4))
    torch.save({"model": model.state_dict()}, tmp_path / "opensora.pth")  # no position tables in it
    out = tmp_path / "run"
    assert train(manifest, out, 1, "--init-from", str(tmp_path / "opensora.pth"), "optim.lr=0") == 0
    got = weights(out / "checkpoints" / "1" / "model")
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_init_from_weights_that_do_not_fit_names_the_keys(manifest, tmp_path, capsys):
    folder = tiny_folder(tmp_path / "converted")
    capsys.readouterr()
    assert train(manifest, tmp_path / "run", 1, "--init-from", str(folder), "model.hidden_size=32") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the encoders' loading bars)
    assert err.startswith("train: error: --init-from") and "does not fit the model" in err
    assert "x_embedder.proj.weight (64, 3, 1, 4, 4) in the weights vs (32, 3, 1, 4, 4) here" in err
    assert "hidden_size: 64 in the weights, 32 here" in err
