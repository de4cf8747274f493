"""`plan` against published numbers and against the code it estimates: Open-Sora 1.0's tokens per sample,
throughput and stage-1 GPU-hours, the STDiT-XL/2 parameter count, FLOPs against torch's FlopCounterMode on a
real forward and backward, memory against the measured peak of a real training step, the captioner's token
counts against its own processor, the data card's Compute section, and one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

import plan
from trainer import estimate
from trainer.config import load_config

CONFIGS = Path(estimate.__file__).resolve().parent / "configs"
STAGE1, TINY = CONFIGS / "opensora-v1" / "stage1.yaml", CONFIGS / "tiny.yaml"


def args(*argv):
    a = plan.build_parser().parse_args(["--config", str(TINY), *argv])
    plan.check(a)
    return a


@pytest.fixture(scope="module")
def stage1():
    return estimate.Parts(load_config(STAGE1))


def test_opensora_tokens_per_sample_round_to_its_table(stage1):
    """Open-Sora 1.0's acceleration table: 16x256 (4k), 16x512 (16k), 64x512 (65k), 360x512 (370k) tokens with
    SD-VAE (8x) and patch 1x2x2; its figures are rounded to their last digit."""
    published = {(16, 256, 256): (4, 1), (16, 512, 512): (16, 1), (64, 512, 512): (65, 1), (360, 512, 512): (370, 10)}
    for bucket, (k, unit) in published.items():
        tokens = estimate.bucket_shape(stage1.model, stage1.vae, bucket)["tokens"]
        assert abs(tokens / 1000 - k) < unit, (bucket, tokens)
        assert tokens == bucket[0] * (bucket[1] // 16) * (bucket[2] // 16)


def test_28k_tokens_per_s_is_its_7_samples_per_s_and_stage1_gpu_hours(capsys):
    """28k tokens/s/GPU is 7.00 samples/s x 4,096 tokens = 28,672 written down to the thousand; stage 1 is 80k
    steps at batch 8 on 64 H800s."""
    def run(tokens_per_s):
        a = args("--gpus", "64", "--gpu", "h800", "--tokens-per-s", str(tokens_per_s))
        return plan.plan_config(STAGE1, [], None, a, with_memory=False)["run"]
    assert run(28_672)["samples_per_s_per_gpu"] == pytest.approx(7.00)
    assert run(28_000)["samples_per_s_per_gpu"] <= 7.00 < run(29_000)["samples_per_s_per_gpu"]
    r = run(28_000)
    assert (r["steps"], r["samples_per_step"]) == (80_000, 8 * 64)
    assert r["gpu_hours"] == pytest.approx(80_000 * 8 * 64 * 4096 / 28_000 / 3600)  # 1,664 GPU-hours
    assert r["hours"] == pytest.approx(r["gpu_hours"] / 64)
    # the default MFU is that throughput's: the README's claim
    assert round(r["mfu"], 2) == plan.DEFAULT_MFU
    assert plan.main(["--config", str(STAGE1), "--gpus", "64", "--gpu", "H800", "--tokens-per-s", "28000",
                      "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "1,664 GPU-hours" in printed["summary"][0] and printed["configs"][0]["run"]["gpu_hours"] == r["gpu_hours"]


def test_parameters_are_the_models_own_and_explain_open_soras_figures(stage1):
    n = stage1.params()["stdit"]
    model = stage1.model
    assert n == sum(p.numel() for p in model.parameters()) and 755e6 < n < 765e6  # about 760M
    temporal = sum(p.numel() for k, p in model.named_parameters() if ".attn_temp." in k)
    buffer = model.y_embedder.y_embedding.numel()  # a buffer in Open-Sora, so not in its count
    assert round((n - buffer) / 2**20) == 724  # Open-Sora counts in units of 2^20 (its format_numel_str)
    assert abs((n - buffer - temporal) / 2**20 - 580) / 580 < 0.01  # "580M" for PixArt-alpha before temporal
    assert round((n - temporal) / 1e6) == 611  # PixArt-XL/2's decimal count
    assert 4.7e9 < stage1.params()["text_encoder"] < 4.8e9 and 80e6 < stage1.params()["vae"] < 90e6  # T5-XXL, SD-VAE


def test_a_60s_30fps_video_at_256_tokens_per_frame_is_460800_tokens():
    p = estimate.Parts(load_config(STAGE1, ["data.buckets=[[1800,256,256]]", "data.frame_interval=1"]))
    assert estimate.bucket_shape(p.model, p.vae, (1800, 256, 256))["tokens"] == 460_800


def test_video_vae_and_sd_vae_give_their_own_latents(tmp_path):
    """The geometry without weights answers as the loaded VAE does; 4x temporal compression shows."""
    from trainer.encoders import build_vae
    from trainer.testing import make_tiny_vae, make_tiny_video_vae

    wan, sd = make_tiny_video_vae(str(tmp_path / "wan"), "wan"), make_tiny_vae(str(tmp_path / "sd"))
    for kind, path in (("wan", wan), ("sd-vae", sd)):
        light, _ = estimate.vae_without_weights({"kind": kind, "path": path})
        loaded = build_vae(kind, path=path)
        for bucket in ((17, 64, 64), (33, 32, 48)):
            assert light.latent_shape(*bucket) == loaded.latent_shape(*bucket)
    light, _ = estimate.vae_without_weights({"kind": "wan", "path": wan})
    assert light.latent_shape(17, 64, 64)[1] == 5 and build_vae("sd-vae", path=sd).latent_shape(17, 64, 64)[1] == 17
    with pytest.raises(ValueError, match="4k\\+1 frames"):
        light.latent_shape(16, 64, 64)


@pytest.mark.parametrize("patch,shape,ckpt", [((1, 4, 4), (8, 32, 32), False), ((2, 2, 2), (5, 16, 24), True)])
def test_flops_match_flop_counter_on_a_real_forward_and_backward(patch, shape, ckpt):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.model import build_stdit

    torch.manual_seed(0)
    m = build_stdit(None, in_channels=3, patch_size=patch, hidden_size=64, depth=2, num_heads=4,
                    caption_channels=32, model_max_length=16, pred_sigma=True).train()
    if ckpt:
        m.enable_gradient_checkpointing()
    B, L = 2, 16
    x, y, mask = torch.randn(B, 3, *shape), torch.randn(B, L, 32), torch.ones(B, L, dtype=torch.bool)
    mask[0, 9:] = False
    drop = torch.zeros(B, dtype=torch.bool)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counted:  # attention as matmuls
        m(x, torch.rand(B) * 1000, y, mask, force_drop=drop).square().mean().backward()
    grid = tuple(-(-n // p) for n, p in zip(shape, patch))
    fwd = estimate.forward_flops(m, grid, L)
    ours = estimate.train_flops(fwd, ckpt, 64)
    assert counted.get_total_flops() == B * ours["hardware"]
    assert ours["hardware"] > ours["model"] if ckpt else ours["hardware"] == ours["model"]
    assert fwd["full_attention"] > fwd["spatial_attention"] + fwd["temporal_attention"]


def measured_peak(cfg, t5_path, bucket) -> int:
    """Peak bytes of a real training step on CPU (torch's MemTracker): the trainer's model, objective, AdamW,
    EMA, gradient clipping and precision; the text encoder's weights counted, its output computed before."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from trainer.checkpoints import EMA, build_model
    from trainer.diffusion import build_diffusion
    from trainer.encoders import TextEncoder

    text = TextEncoder(t5_path, "t5", cfg["text"]["max_length"])
    parts = estimate.Parts(cfg)
    model = build_model(cfg, parts.vae.channels, text.channels).train()
    if cfg["model"]["gradient_checkpointing"]:
        model.enable_gradient_checkpointing()
    d = dict(cfg["diffusion"])
    objective, B = build_diffusion(d.pop("name"), **d), cfg["data"]["batch_size"]
    opt, ema = torch.optim.AdamW(model.parameters(), lr=1e-4), EMA(model.parameters(), 0.99)
    x0, (y, mask) = torch.randn(B, *parts.vae.latent_shape(*bucket)), text(["a red square moving left"] * B)
    dtype = {"bf16": torch.bfloat16}.get(cfg["train"]["mixed_precision"])

    def step():
        with torch.autocast("cpu", dtype=dtype) if dtype else torch.enable_grad():
            loss = objective.loss(model, x0, y, mask, generator=torch.Generator().manual_seed(0),
                                  drop=torch.zeros(B, dtype=torch.bool))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(model.parameters())
    step()  # the optimizer's moments exist from here on
    tracker = MemTracker()
    tracker.track_external(model, opt, *text.model.parameters(), *ema.shadow)
    with tracker:
        step()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


def test_memory_estimate_is_within_20_percent_of_the_measured_peak(tmp_path):
    from trainer.memory import memory
    from trainer.testing import make_tiny_t5, make_tiny_vae

    t5, vae = make_tiny_t5(str(tmp_path / "t5")), make_tiny_vae(str(tmp_path / "vae"))
    tiny = load_config(TINY, ["text.kind=t5", f"text.path={t5}", "data.batch_size=2"])
    # stage 1 narrowed: bf16 autocast, gradient checkpointing, ddpm with learned sigma, latents as features
    narrow = load_config(STAGE1, ["model.hidden_size=64", "model.depth=2", "model.num_heads=4", "data.batch_size=2",
                                  "data.buckets=[[8,32,64]]", f"text.path={t5}", f"vae.path={vae}"])
    for cfg, bucket, features in ((tiny, (8, 32, 48), False), (narrow, (8, 32, 64), True)):
        est = memory(estimate.Parts(cfg), bucket, features=features)
        peak = measured_peak(cfg, t5, bucket)
        assert 0.8 < est["total"] / peak < 1.2, (est, peak)
        print(f"memory estimate / measured peak: {est['total'] / peak:.3f}")
    full = memory(estimate.Parts(narrow), (8, 32, 64), features=True)["activations"]
    assert full["checkpointed"] < full["full"]


def manifest(path: Path, shapes) -> Path:
    from index.manifest import write_manifest
    from index.record import Clip

    rows = [{**Clip.from_range(f"v{i}.mp4", f"{i:064x}", 0, n, 0.0, n / 24, 24.0, w, h).to_dict(),
             "caption": "a red square", "caption_tokens": 40 + i % 3} for i, (n, h, w) in enumerate(shapes)]
    return write_manifest(pd.DataFrame(rows), path)


def test_data_buckets_epochs_and_captioning_as_the_trainer_and_captioner_do(tmp_path):
    from trainer.data import BucketSampler

    shapes = [(40, 360, 640)] * 7 + [(20, 640, 360)] * 3 + [(50, 480, 480)] * 2
    path = manifest(tmp_path / "clips.parquet", shapes)
    cfg = ["data.buckets=[[16,256,448],[16,448,256],[16,256,256]]", "data.batch_size=2"]
    a = args("--data", str(path), "--epochs", "1", "--gpus", "2")
    rows, counted, note = plan.read_data(path)
    p = plan.plan_config(STAGE1, cfg, counted, a, with_memory=False)
    sampler = BucketSampler(shapes, load_config(STAGE1, cfg)["data"]["buckets"], 2, 0, 2)
    assert [b["clips"] for b in p["buckets"]] == [sampler.assignment.count(i) for i in range(3)] == [7, 3, 2]
    assert p["run"]["epoch_steps"] == len(sampler) and p["run"]["steps"] == len(sampler)
    assert p["buckets"][0]["dataset_tokens"] == 7 * p["buckets"][0]["tokens"]
    c = plan.plan_captions(rows, args("--caption-model", "qwen-vl", "--caption-tokens-per-s", "100"))
    # Qwen2.5-VL at the captioner's 360*420-pixel cap: 640x360 frames are decoded at 504x280 (18x10 tokens per
    # 2 frames after the 2x2 merge of 14-pixel patches), 480x480 at 364x364 (13x13); 8 frames a clip
    assert c["frames_per_clip"] == 8 and c["output_tokens_per_clip"] == pytest.approx(41.0)
    assert c["visual_tokens_per_clip"] == pytest.approx((10 * 4 * 18 * 10 + 2 * 4 * 13 * 13) / 12)
    assert c["gpu_hours"] == pytest.approx(41.0 * 12 / 100 / 3600)


@pytest.mark.parametrize("kind", ["qwen2-vl", "qwen2.5-vl"])
def test_caption_tokens_by_the_family_rule_match_the_models_processor(tmp_path, kind):
    from captioner.estimate import CaptionCost
    from captioner.testing import build_tiny_model

    folder = build_tiny_model(kind, tmp_path / kind)
    for options in ({}, {"sample_fps": 2.0}):
        exact = CaptionCost(folder, max_pixels=12544, **options)
        rule = CaptionCost(folder, max_pixels=12544, exact=False, **options)
        assert exact.exact and not rule.exact
        for w, h, n in ((640, 360, 240), (1920, 1080, 61), (100, 700, 9), (320, 240, 3)):
            row = dict(width=w, height=h, fps=24.0, start_frame=0, end_frame=n, num_frames=n, start_sec=0.0,
                       end_sec=n / 24)
            a, b = exact.clip(row), rule.clip(row)
            assert (a.frames, a.width, a.height, a.visual) == (b.frames, b.width, b.height, b.visual)
            assert a.visual == a.frames // 2 * (a.height // 28) * (a.width // 28) and a.text > 0


def test_card_gets_a_compute_section_once(tmp_path):
    from huggingface_hub import DatasetCard

    shards = tmp_path / "shards"
    manifest(shards / "clips.parquet", [(40, 256, 256)] * 5)
    pd.read_parquet(shards / "clips.parquet").to_parquet(shards / "index.parquet")
    (shards / "DATA_CARD.md").write_text("---\npretty_name: t\n---\n\n# t\n\n## Limitations\n\nSome.\n")
    argv = ["--config", str(TINY), "--data", str(shards), "--card"]
    assert plan.main(argv) == 0 and plan.main(argv) == 0  # a second run replaces the section
    text = (shards / "DATA_CARD.md").read_text()
    assert text.count("## Compute") == 1 and text.count(plan.CARD_START) == 1 and "## Limitations" in text
    section = text.split(plan.CARD_START)[1]
    for name in ("tiny.yaml", "stage1.yaml", "stage2.yaml", "stage3.yaml"):
        assert f"| {name} |" in section
    stage1 = next(line for line in section.splitlines() if line.startswith("| stage1.yaml"))
    assert "| 5 | 4,096 | 20,480 |" in stage1  # clips, tokens per sample, tokens in the dataset
    assert DatasetCard(text).data.pretty_name == "t"


def test_plan_reads_data_on_a_bucket_and_writes_its_card_there(tmp_path, s3, capsys):
    import fsspec

    shards = tmp_path / "shards"
    manifest(shards / "clips.parquet", [(40, 256, 256)] * 5 + [(20, 640, 360)] * 2)
    pd.read_parquet(shards / "clips.parquet").to_parquet(shards / "index.parquet")
    (shards / "DATA_CARD.md").write_text("# t\n\n## Limitations\n\nSome.\n")
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for f in shards.iterdir():
        fs.pipe_file(f"{s3}/shards/{f.name}", f.read_bytes())
    assert plan.main(["--config", str(TINY), "--data", str(shards), "--json"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert plan.main(["--config", str(TINY), "--data", f"{s3}/shards", "--json"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert remote["data"]["clips"] == local["data"]["clips"] == 7
    assert remote["configs"] == local["configs"] and remote["captioning"] == local["captioning"]
    assert plan.main(["--config", str(TINY), "--data", f"{s3}/shards", "--card"]) == 0
    assert plan.main(["--config", str(TINY), "--data", str(shards), "--card"]) == 0
    assert fs.cat_file(f"{s3}/shards/DATA_CARD.md").decode() == (shards / "DATA_CARD.md").read_text()
    assert plan.main(["--config", str(TINY), "--data", "s3://no-such-bucket-here/shards"]) == 2
    assert "no bucket" in capsys.readouterr().err


def test_run_plan_for_train(tmp_path):
    p = estimate.Parts(load_config(TINY))
    run = estimate.RunPlan(p.cfg, p.vae, p.model, 2, [(8, 32, 32)] * 5 + [(8, 32, 48)])  # batches of 4
    assert run.info["tokens_per_step"] == round(4 * 2 * (2 * 512 + 768) / 3)  # 2 batches of 32x32, 1 of 32x48
    assert "tokens/step" in run.line() and "FLOPs" in run.line()
    line = run.measured(10, 8.0)
    assert math.isclose(run.info["measured"]["seconds_to_max_steps"], 190 * 8 / 8.0) and "3 min at this rate" in line
    assert json.loads(run.write(tmp_path).read_text())["measured"]["step"] == 10


def test_train_writes_its_plan(tmp_path):
    from accelerate.state import AcceleratorState

    import trainer.train as train_module
    from trainer.testing import make_square_manifest

    data = make_square_manifest(tmp_path / "data", count=3, frames=8, size=32)
    AcceleratorState._reset_state(True)
    try:
        assert train_module.main(["--config", str(TINY), "--data", str(data), "--max-steps", "2", "--output-dir",
                                  str(tmp_path / "run"), "data.num_workers=0"]) == 0
    finally:
        AcceleratorState._reset_state(True)
    written = json.loads((tmp_path / "run" / "plan.json").read_text())
    p = plan.plan_config(TINY, [], {(8, 32, 32): 3}, args("--steps", "2"), with_memory=False)
    assert written["tokens_per_step"] == round(p["run"]["tokens"] / 2) == 4 * 512  # one 32x32 batch of 4 a step
    assert written["measured"]["step"] == 2 and written["measured"]["samples_per_s"] > 0


@pytest.mark.parametrize("argv,says", [
    (["--config", "nope.yaml"], "no such config file"),
    (["--config", str(TINY), "model.depht=3"], "did you mean model.depth"),
    (["--config", str(TINY), "--data", "missing/"], "no such file or folder"),
    (["--config", str(TINY), "--data", str(CONFIGS)], "without index.parquet"),
    (["--config", str(TINY), "--data", str(TINY)], "--data"),  # not a manifest
    (["--config", str(TINY), "--gpu", "Z80"], "not one of"),
    (["--config", str(TINY), "--gpus", "0"], "positive"),
    (["--config", str(TINY), "--epochs", "2"], "--epochs needs --data"),
    (["--config", str(STAGE1), "data.buckets=[[16,100,100]]"], "divisible by 8"),
    (["--config", str(STAGE1), "vae.path=nobody/vae"], "hf download nobody/vae config.json"),
])
def test_a_bad_config_or_dataset_is_one_line_and_exit_2(argv, says, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an unknown hub id is not looked up
    assert plan.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("plan: error: ") and err.count("\n") == 1 and says in err, err


def test_a_config_too_big_for_the_gpu_is_a_warning_naming_one_that_fits(capsys):
    """Stage 3 as shipped (batch 4 of 64x512x512): its checkpointed block inputs and the VAE's encode of 64 frames
    at once do not fit an 80 GB H100, even with FSDP."""
    assert plan.main(["--config", str(CONFIGS / "opensora-v1" / "stage3.yaml"), "--gpus", "8"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: does not fit 90% of an H100's 80 GB (smallest that fits: H200)" in out
