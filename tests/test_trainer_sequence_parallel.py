"""Sequence parallelism (train.sequence_parallel, trainer/parallel.py) on CPU with gloo: two processes sharing
each sample's tokens give the loss and the gradients of one process on the whole sequence, for every
conditioning structure; two groups of two (data parallel across them) give those of one process on both groups'
samples; training under it writes checkpoints that resume without it and back; a degree that does not divide
the heads or the processes is one line, exit 2."""

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
from trainer.model import CONDITIONINGS, build_stdit
from trainer.testing import make_square_manifest

REPO = Path(train_module.__file__).resolve().parents[1]
CONFIG = REPO / "trainer" / "configs" / "tiny.yaml"

# The model's forward and backward on fixed inputs, for one conditioning and sequence-parallel degree, its loss
# and DDP-averaged gradients saved by rank 0. Every process draws the same weights and inputs (seeded).
WORKER = textwrap.dedent('''
    import sys
    import torch
    import torch.distributed as dist
    from trainer.model import build_stdit
    from trainer.parallel import enable

    conditioning, degree, checkpointing, out = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = build_stdit(None, in_channels=3, patch_size=(1, 4, 4), hidden_size=32, depth=2, num_heads=4,
                        caption_channels=16, model_max_length=8, conditioning=conditioning).train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights everywhere: the zero-initialised branches would carry no gradient
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    if checkpointing:
        model.enable_gradient_checkpointing()
    dp_rank, dp_world = enable(model, degree)
    B = 4  # the global batch; each data-parallel group takes its share
    x, y = torch.randn(B, 3, 3, 16, 24, generator=g), torch.randn(B, 8, 16, generator=g)
    t, target = torch.rand(B, generator=g) * 1000, torch.randn(B, 3, 3, 16, 24, generator=g)
    mask = torch.ones(B, 8, dtype=torch.bool)
    mask[0, 5:] = mask[3, 2:] = False
    drop = torch.tensor([False, True, False, False])  # one null caption: its table has a gradient too
    rows = slice(dp_rank * B // dp_world, (dp_rank + 1) * B // dp_world)
    out_ = model(x[rows], t[rows], y[rows], mask[rows], force_drop=drop[rows])
    loss = (out_ - target[rows]).square().mean()
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():  # what DDP does: the mean over all processes
        dist.all_reduce(p.grad)
        grads[name] = p.grad / dist.get_world_size()
    losses = [torch.zeros(()) for _ in range(dist.get_world_size())]
    dist.all_gather(losses, loss.detach())
    if dist.get_rank() == 0:
        torch.save({"loss": torch.stack(losses), "grads": grads}, out)
    dist.destroy_process_group()
''')


def env():
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(tmp_path, processes: int, conditioning: str, degree: int, checkpointing: bool = False) -> dict:
    script, out = tmp_path / "worker.py", tmp_path / f"{conditioning}_{processes}_{degree}.pt"
    script.write_text(WORKER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                           "--master_port", str(free_port()), str(script), conditioning, str(degree), str(int(checkpointing)),
                           str(out)], capture_output=True, text=True, env=env(), cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


# Float tolerance: the sharded run adds the same float32 products in another order (a weight's gradient is the
# sum of the processes' token shares instead of one sum over all tokens; the gather's backward scales by 2,
# DDP's mean divides by 2, both exact in binary). Each sum has a few hundred terms of up to the gradient's
# largest size, so reordering moves it by ~1e-5 of that size (measured: up to 2e-5 for the patch embedding's
# weight, a sum over every token of 4 samples). Gradients are compared to 1e-4 of their largest element, the
# loss (one sum) to 1e-5 relative; a wrong shard (a frame split across processes, mixed-up heads, a factor of 2
# missing) is off by the gradient's own size.
RTOL, ATOL = 1e-5, 1e-6


def assert_same_gradient(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    scale = want.abs().max().item()
    assert scale > 0, name  # every parameter has a gradient to compare
    assert (got - want).abs().max().item() <= 1e-4 * scale, (name, (got - want).abs().max().item(), scale)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_two_processes_sharing_the_tokens_give_the_loss_and_gradients_of_one(conditioning, tmp_path):
    one = run_workers(tmp_path, 1, conditioning, 1)
    two = run_workers(tmp_path, 2, conditioning, 2, checkpointing=conditioning == "in_context")
    assert two["loss"][0] == two["loss"][1]  # the group's processes compute the same loss from the gathered output
    torch.testing.assert_close(two["loss"][0], one["loss"][0], rtol=RTOL, atol=ATOL)
    assert one["grads"].keys() == two["grads"].keys()
    for name, g in one["grads"].items():
        assert_same_gradient(two["grads"][name], g, name)


@pytest.mark.slow
def test_two_groups_of_two_are_data_parallel_across_the_groups(tmp_path):
    one = run_workers(tmp_path, 1, "cross_attn", 1)  # the 4 samples in one process
    four = run_workers(tmp_path, 4, "cross_attn", 2)  # 2 samples per group, each shared by 2 processes
    torch.testing.assert_close(four["loss"].mean(), one["loss"][0], rtol=RTOL, atol=ATOL)
    for name, g in one["grads"].items():
        assert_same_gradient(four["grads"][name], g, name)


# ------------------------------------------------------------------ the trainer under sequence parallelism

COMMON = ["data.buckets=[[4,16,16]]", "data.batch_size=2", "text.max_length=8", "optim.warmup_steps=1",
          "optim.lr=1e-3", "optim.eps=1e-3", "train.ckpt_every=2", "train.log_every=1", "train.keep_last=3",
          "train.mixed_precision=no", "optim.schedule=constant"]  # constant: a run cut at step 2 has the lr of one
# to step 4; eps: see tests/test_trainer_distributed.py (the weights move by ~1e-7 per rounding of a gradient)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return make_square_manifest(tmp_path_factory.mktemp("data"), count=4, frames=4, size=16)


def train_cmd(clips, out, steps, *extra):
    return [sys.executable, "-m", "trainer.train", "--config", str(CONFIG), "--data", str(clips), "--max-steps",
            str(steps), "--output-dir", str(out), *COMMON, *extra]


def train(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(out: Path, step: int) -> dict:
    return load_file(str(out / "checkpoints" / str(step) / "model" / "diffusion_pytorch_model.safetensors"))


def losses(out: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_training_under_sequence_parallelism_resumes_without_it_and_back(clips, tmp_path):
    plain = tmp_path / "plain"  # the reference: one process, 4 steps
    train(train_cmd(clips, plain, 4))
    sp = tmp_path / "sp"  # 2 processes sharing each sample's tokens, then resumed by one process alone
    proc = train(train_cmd(clips, sp, 2, "--num-processes", "2", "train.sequence_parallel=2"))
    assert "sequence parallel: 2 processes per sample" in proc.stdout + proc.stderr
    train(train_cmd(clips, sp, 4, "--resume", "latest"))
    back = tmp_path / "back"  # one process, then resumed under sequence parallelism
    train(train_cmd(clips, back, 2))
    train(train_cmd(clips, back, 4, "--resume", "latest", "--num-processes", "2", "train.sequence_parallel=2"))
    for run in (sp, back):
        assert losses(run) == pytest.approx(losses(plain), rel=1e-5)
        a, b = weights(plain, 4), weights(run, 4)
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5, run.name


@pytest.mark.parametrize("argv,says", [
    (["--num-processes", "3", "train.sequence_parallel=2"],
     "train.sequence_parallel: 2 must divide the number of processes (3)"),
    (["train.sequence_parallel=8"], "train.sequence_parallel: 8 processes must divide model.num_heads 4"),
])
def test_a_degree_not_dividing_the_processes_or_heads_is_one_line_and_exit_2(argv, says, clips, tmp_path):
    proc = subprocess.run(train_cmd(clips, tmp_path / "run", 2, *argv), capture_output=True, text=True, env=env(),
                          cwd=REPO, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"train: error: {says}"), proc.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()
