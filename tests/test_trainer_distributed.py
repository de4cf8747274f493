"""Many processes on CPU: two DDP processes (gloo, started by `train --num-processes 2`) train the weights one
process trains with the same global batch; gradient checkpointing and bf16 give the fp32 losses; the launcher
mode relays a training process's one-line error and exit code; the EMA of FSDP2 shards equals the EMA of the
full model."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import trainer.train as train_module
from trainer.testing import make_square_manifest

REPO = Path(train_module.__file__).resolve().parents[1]
CONFIG = REPO / "trainer" / "configs" / "tiny.yaml"
CPU_LAUNCH = REPO / "trainer" / "configs" / "accelerate" / "cpu.yaml"
# lr / eps = 1: Adam's step g / (|g| + eps) changes by at most lr/eps times a change of g, so the float32
# rounding of DDP's all-reduce (~1e-7 of the gradient) moves the weights by ~1e-7 per step, not by up to 2 lr
# as a sign flip of a near-zero gradient component could with eps = 1e-8.
COMMON = ["data.buckets=[[4,16,16]]", "text.max_length=8", "optim.warmup_steps=1", "optim.lr=1e-3",
          "optim.eps=1e-3", "train.ckpt_every=3", "train.log_every=1", "train.mixed_precision=no"]
TOLERANCE = 1e-5  # 100x the rounding bound above over 3 steps; the weights move by ~3e-3 (see the control)


@pytest.fixture(scope="module")
def four_clips(tmp_path_factory):
    return make_square_manifest(tmp_path_factory.mktemp("data"), count=4, frames=4, size=16)


@pytest.fixture
def fresh_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def env():
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_weights(out: Path, step: int, which: str = "model") -> dict:
    return load_file(str(out / "checkpoints" / str(step) / which / "diffusion_pytorch_model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_ddp_processes_train_the_weights_of_one_with_the_same_global_batch(four_clips, tmp_path,
                                                                                fresh_accelerate):
    one = tmp_path / "one"  # one process, batch 4: every step sees the 4 clips
    assert train_module.main(["--config", str(CONFIG), "--data", str(four_clips), "--max-steps", "3",
                              "--output-dir", str(one), "data.batch_size=4", *COMMON]) == 0
    two = tmp_path / "two"  # two processes, batch 2 each: the same 4 clips per step, split
    proc = subprocess.run([sys.executable, "-m", "trainer.train", "--num-processes", "2", "--config", str(CONFIG),
                           "--data", str(four_clips), "--max-steps", "3", "--output-dir", str(two),
                           "data.batch_size=2", *COMMON], capture_output=True, text=True, env=env(), cwd=REPO,
                          timeout=900)  # (no GPU: the launcher starts them with torchrun, gloo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout + proc.stderr
    ckpt = two / "checkpoints" / "3"
    assert (ckpt / "random_states_0.pkl").exists() and (ckpt / "random_states_1.pkl").exists()  # for --resume
    for which in ("model", "ema"):
        assert max_diff(model_weights(one, 3, which), model_weights(two, 3, which)) < TOLERANCE, which
    losses = [[json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()] for out in (one, two)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    half = tmp_path / "half"  # control: one process with batch 2 sees other clips per step
    assert train_module.main(["--config", str(CONFIG), "--data", str(four_clips), "--max-steps", "3",
                              "--output-dir", str(half), "data.batch_size=2", *COMMON]) == 0
    assert max_diff(model_weights(one, 3), model_weights(half, 3)) > 100 * TOLERANCE


@pytest.mark.slow
def test_gradient_checkpointing_and_bf16_give_the_fp32_losses(four_clips, tmp_path):
    from accelerate.state import AcceleratorState

    runs = {"fp32": ["train.mixed_precision=no"],
            "checkpointing": ["train.mixed_precision=no", "model.gradient_checkpointing=true"],
            "bf16": ["train.mixed_precision=bf16"]}
    losses = {}
    for name, extra in runs.items():
        AcceleratorState._reset_state(True)
        out = tmp_path / name
        assert train_module.main(["--config", str(CONFIG), "--data", str(four_clips), "--max-steps", "4",
                                  "--output-dir", str(out), "data.batch_size=4", *COMMON[:-1], *extra]) == 0
        losses[name] = [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    AcceleratorState._reset_state(True)
    assert len(losses["fp32"]) == 4
    # recomputing the blocks in backward is the same float32 arithmetic: equal to rounding
    assert losses["checkpointing"] == pytest.approx(losses["fp32"], rel=1e-5)
    # bf16 autocast rounds the matmuls to 8 significant bits (relative 2^-9 = 0.2 %): a loss computed through
    # them is within that of fp32's (measured: 4e-5 after 4 steps; the loss itself falls 13 % over them)
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-3)
    assert losses["bf16"] != losses["fp32"]  # autocast was really on


def test_launcher_mode_checks_first_and_relays_a_training_process_error(four_clips, tmp_path):
    base = [sys.executable, "-m", "trainer.train", "--accelerate-config", str(CPU_LAUNCH), "--config", str(CONFIG),
            "--data", str(four_clips), "data.batch_size=2", *COMMON]
    bad = subprocess.run([*base, "--output-dir", str(tmp_path / "bad"), "optim.lrr=1"], capture_output=True,
                         text=True, env=env(), cwd=REPO, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "train: error: unknown config key optim.lrr (did you mean optim.lr?)"]
    folder = tmp_path / "wide"
    torch.manual_seed(0)
    from trainer.model import build_stdit
    build_stdit("STDiT-T/2", in_channels=3, caption_channels=32, model_max_length=16, hidden_size=128,
                patch_size=(1, 4, 4)).save_pretrained(folder)
    late = subprocess.run([sys.executable, "-m", "trainer.train", "--num-processes", "2", "--config", str(CONFIG),
                           "--data", str(four_clips), "data.batch_size=2", *COMMON, "--output-dir",
                           str(tmp_path / "late"), "--max-steps", "1", "--init-from", str(folder)],
                          capture_output=True, text=True, env=env(), cwd=REPO, timeout=600)
    assert late.returncode == 2, late.stderr[-3000:]  # found by the training processes, after their encoders
    lines = [ln for ln in late.stderr.replace("\r", "\n").splitlines()
             if ln.strip() and not ln.startswith(("Loading weights", "Writing model"))]  # (transformers' bars)
    assert len(lines) == 1 and lines[0].startswith("train: error: --init-from"), lines  # rank 0's line only
    ok = subprocess.run([*base, "--output-dir", str(tmp_path / "ok"), "--max-steps", "1"], capture_output=True,
                        text=True, env=env(), cwd=REPO, timeout=600)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (tmp_path / "ok" / "checkpoints" / "1" / "ema").is_dir()


FSDP_SCRIPT = textwrap.dedent('''
    import os, sys
    import torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from trainer.checkpoints import EMA
    from trainer.model import build_stdit

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    full = build_stdit("STDiT-T/2", in_channels=3, caption_channels=8, model_max_length=4, patch_size=(1, 2, 2))
    sharded = build_stdit("STDiT-T/2", in_channels=3, caption_channels=8, model_max_length=4, patch_size=(1, 2, 2))
    sharded.load_state_dict(full.state_dict())
    for block in sharded.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    emas = [EMA(m.parameters(), 0.9) for m in (full, sharded)]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (full, sharded)]
    g = torch.Generator().manual_seed(1)  # the same batch on every process: FSDP's average is the full gradient
    for _ in range(4):
        x, y = torch.randn(2, 3, 2, 4, 4, generator=g), torch.randn(2, 4, 8, generator=g)
        t = torch.tensor([100.0, 700.0])
        for m, opt, ema in zip((full, sharded), opts, emas):
            m(x, t, y, force_drop=torch.tensor([False, True])).square().mean().backward()
            opt.step()
            opt.zero_grad()
            ema.step(m.parameters())
    a, b = (e.full_state(list(m.named_parameters())) for e, m in zip(emas, (full, sharded)))
    assert all(sharded_p.to_local().numel() < full_p.numel() for sharded_p, full_p in
               zip(sharded.parameters(), full.parameters()) if full_p.numel() > 16)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    restored = EMA(sharded.parameters(), 0.9)
    restored.load_full_state(list(sharded.named_parameters()), b, emas[1].updates)
    same = all(torch.equal(r, s) for r, s in zip(restored.shadow, emas[1].shadow))
    print(f"rank {dist.get_rank()} worst {worst:.3g} restored {same}")
    dist.barrier()  # no rank closes its connections while the other is still using them
    dist.destroy_process_group()
    sys.stdout.flush()  # torch's gloo threads can abort the interpreter's teardown (SIGABRT), which is not ours to test
    os._exit(0 if worst < 1e-5 and same else 1)
''')


@pytest.mark.slow
def test_ema_of_fsdp2_shards_equals_the_ema_of_the_full_model(tmp_path):
    script = tmp_path / "fsdp_ema.py"
    script.write_text(FSDP_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), str(script)], capture_output=True, text=True, env=env(), cwd=REPO,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("restored True") == 2
