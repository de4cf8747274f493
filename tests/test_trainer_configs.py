"""Every shipped config trains: each is loaded as shipped, then run for two steps on CPU with its model narrowed
to a tiny width and tiny random encoders built here (same keys otherwise: its diffusion, precision, EMA,
checkpointing, position scales and --init-from chain are the shipped ones). Accelerate configs parse."""

import re
from pathlib import Path

import pytest
import torch
import yaml

import trainer.train as train_module
from trainer.config import ConfigError, load_config
from trainer.model import STDiT, build_stdit, spatial_pos_embed
from trainer.testing import make_square_manifest, make_tiny_t5, make_tiny_vae

CONFIGS = Path(train_module.__file__).resolve().parent / "configs"
TINY_MODEL = ["model.hidden_size=64", "model.depth=2", "model.num_heads=4"]
TINY_DATA = ["data.buckets=[[4,16,16]]", "data.batch_size=2", "data.num_workers=0"]


@pytest.fixture
def fresh_accelerate():
    """Each run sets its own mixed precision: Accelerate's process-wide state is reset around the test."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    return {"data": make_square_manifest(root / "data", count=4, frames=4, size=16),
            "t5": make_tiny_t5(str(root / "t5")), "vae": make_tiny_vae(str(root / "vae"), latent_channels=4)}


def tiny_pixart_file(path: Path) -> Path:
    """A PixArt-alpha-shaped checkpoint (2D patch embedding, no temporal attention, its 8x8 position table) that
    fits the tiny encoders: 4 latent channels, 32 text channels, 120 caption tokens, learned sigma."""
    model = build_stdit(None, in_channels=4, patch_size=(1, 2, 2), hidden_size=64, depth=2, num_heads=4,
                        caption_channels=32, model_max_length=120, pred_sigma=True)
    sd = {k: v for k, v in model.state_dict().items() if ".attn_temp." not in k}
    sd["x_embedder.proj.weight"] = sd["x_embedder.proj.weight"].squeeze(2)  # (D, C, 2, 2)
    sd["pos_embed"] = spatial_pos_embed(64, 8, 8, 1.0, 8)[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd}, path)
    return path


def test_shipped_configs_are_valid_as_they_are():
    shipped = sorted(p for p in CONFIGS.rglob("*.yaml") if "accelerate" not in p.parts)
    assert {p.name for p in shipped} >= {"tiny.yaml", "stage1.yaml", "stage2.yaml", "stage3.yaml"}
    for path in shipped:
        cfg = load_config(path)
        assert cfg.explicit, path
    stages = [load_config(CONFIGS / "opensora-v1" / f"stage{i}.yaml") for i in (1, 2, 3)]
    assert [s["data"]["buckets"] for s in stages] == [[[16, 256, 256]], [[16, 512, 512]], [[64, 512, 512]]]
    assert [s["data"]["frame_interval"] for s in stages] == [3, 3, 2]
    for s in stages:
        assert (s["model"]["size"], s["vae"]["path"], s["text"]["path"], s["text"]["max_length"]) == \
            ("STDiT-XL/2", "stabilityai/sd-vae-ft-ema", "DeepFloyd/t5-v1_1-xxl", 120)
        assert (s["optim"]["lr"], s["train"]["ema_decay"], s["diffusion"]["name"]) == (2e-5, 0.9999, "ddpm")


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {p.stem: load_config_from_file(str(p)).distributed_type.value
             for p in (CONFIGS / "accelerate").glob("*.yaml")}
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "cpu": "NO"}
    fsdp = load_config_from_file(str(CONFIGS / "accelerate" / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_transformer_layer_cls_to_wrap"] == "STDiTBlock"
    assert hasattr(__import__("trainer.model", fromlist=["STDiTBlock"]), "STDiTBlock")


@pytest.mark.slow
def test_tiny_config_trains_two_steps(parts, tmp_path, fresh_accelerate):
    out = tmp_path / "tiny"
    assert train_module.main(["--config", str(CONFIGS / "tiny.yaml"), "--data", str(parts["data"]),
                              "--max-steps", "2", "--output-dir", str(out), *TINY_DATA]) == 0
    assert (out / "checkpoints" / "2" / "ema").is_dir()


@pytest.mark.slow
def test_opensora_v1_stages_train_two_steps_each_chained_by_init_from(parts, tmp_path, fresh_accelerate):
    previous = tiny_pixart_file(tmp_path / "weights" / "PixArt-XL-2-512x512.pth")
    for stage in (1, 2, 3):
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
        path = CONFIGS / "opensora-v1" / f"stage{stage}.yaml"
        shipped = yaml.safe_load(path.read_text())
        out = tmp_path / Path(shipped["train"]["output_dir"]).name
        argv = ["--config", str(path), "--data", str(parts["data"]), "--max-steps", "2", "--output-dir", str(out),
                "--init-from", str(previous), *TINY_MODEL, *TINY_DATA, f"text.path={parts['t5']}",
                f"vae.path={parts['vae']}"]
        assert train_module.main(argv) == 0, stage
        saved = yaml.safe_load((out / "config.yaml").read_text())
        for section in ("diffusion", "optim", "train", "sample", "text"):  # the recipe, as shipped
            for key, value in shipped[section].items():
                if key not in ("output_dir", "max_steps", "path"):
                    assert saved[section][key] == value, (stage, section, key)
        model = STDiT.load_config(str(out / "checkpoints" / "2" / "ema"))
        assert (model["space_scale"], model["time_scale"]) == (shipped["model"]["space_scale"],
                                                               shipped["model"]["time_scale"])
        assert model["pred_sigma"] and model["base_size"] is None and model["hidden_size"] == 64
        previous = out  # the next stage starts from this run's latest EMA weights


def test_tiny_config_lists_every_key():
    import dataclasses

    from trainer.config import SECTIONS

    text = (CONFIGS / "tiny.yaml").read_text()
    for section, cls in SECTIONS.items():
        block = text.split(f"\n{section}:", 1)[1].split("\n\n", 1)[0]
        for f in dataclasses.fields(cls):
            assert f"{f.name}:" in block, f"{section}.{f.name} is not documented in tiny.yaml"


def test_lr_schedules_warm_up_then_decay_to_the_floor_at_max_steps():
    from trainer.config import learning_rate

    def lrs(schedule, ratio=0.0):
        cfg = load_config(None, [f"optim.schedule={schedule}", f"optim.min_lr_ratio={ratio}", "optim.lr=1.0",
                                 "optim.warmup_steps=4"])
        return [learning_rate(cfg["optim"], step, 14) for step in range(14)]

    for schedule in ("constant", "linear", "cosine"):
        assert lrs(schedule)[:4] == [0.25, 0.5, 0.75, 1.0]  # step 3 is the warm-up's last: the full lr
    assert lrs("constant")[4:] == [1.0] * 10
    linear, cosine = lrs("linear"), lrs("cosine")
    assert linear[4:] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    assert cosine[8] == pytest.approx(0.5) and cosine[-1] == pytest.approx(0.0)  # half-way, then the end
    assert all(a > b for a, b in zip(cosine[3:], cosine[4:])) and cosine[5] > linear[5] and cosine[11] < linear[11]
    assert lrs("cosine", 0.1)[-1] == pytest.approx(0.1) and lrs("linear", 0.1)[8] == pytest.approx(0.55)
    for bad, message in (("optim.schedule=cosin", "did you mean cosine"), ("optim.min_lr_ratio=2", "[0, 1]"),
                         ("optim.min_lr_ratio=-1", ">= 0"), ("train.spike_factor=-1", ">= 0")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(None, [bad])
