"""Training-step speed and memory: STDiT against diffusers' LatteTransformer3DModel, same run.

Both models get the same width, depth (STDiT blocks vs Latte spatial+temporal block pairs), heads, patch,
token count, caption length and batch. Reported: median forward+backward time per step, tokens/s, and memory
(CUDA: peak allocated; CPU: bytes of activations saved for backward, a deterministic proxy). Target ratio <= 1.0.
The timed steps alternate between the models (the order reversed every other step); times are the median and
spread (min-max) over --steps, the time ratio is taken per step pair (median and spread).

    python bench/train_speed.py                          # CPU, a small config
    python bench/train_speed.py --device cuda --dtype bf16 --hidden 1152 --depth 28 --heads 16 \
        --frames 16 --latent 32 --batch 1 --caption-len 120 --caption-channels 4096   # STDiT-XL/2, 16x256x256
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _stats import interleave, load_average, per_repeat, repeats_note, spread  # noqa: E402
from trainer.model import build_stdit  # noqa: E402


def build_latte(a):
    from diffusers import LatteTransformer3DModel

    return LatteTransformer3DModel(
        num_attention_heads=a.heads, attention_head_dim=a.hidden // a.heads, in_channels=4, out_channels=4,
        num_layers=a.depth, cross_attention_dim=a.hidden, attention_bias=True, sample_size=a.latent, patch_size=2,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=a.caption_channels, video_length=a.frames)


@contextmanager
def saved_bytes(counter: list):
    """Sum the bytes autograd keeps for backward (activation memory) while the block runs."""
    seen = set()

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            counter[0] += key[1]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def step_fn(name, model, a, device, dtype):
    B, L = a.batch, a.caption_len
    x = torch.randn(B, 4, a.frames, a.latent, a.latent, device=device)
    t = torch.randint(0, 1000, (B,), device=device)
    y = torch.randn(B, L, a.caption_channels, device=device)
    mask = torch.ones(B, L, dtype=torch.bool, device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step():
        with autocast:
            if name == "stdit":
                out = model(x, t.float(), y, mask)
            else:
                # Latte's pipeline passes no caption mask (its mask path breaks with frames); all tokens are valid
                out = model(x, timestep=t, encoder_hidden_states=y, return_dict=False)[0]
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--latent", type=int, default=16, help="latent height = width (patch 2)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--caption-len", type=int, default=32)
    p.add_argument("--caption-channels", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (interleaved)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    a = p.parse_args(argv)
    if a.steps < 1:
        p.error("--steps must be at least 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    torch.manual_seed(0)
    models = {
        "stdit": build_stdit(None, in_channels=4, patch_size=(1, 2, 2), hidden_size=a.hidden, depth=a.depth,
                             num_heads=a.heads, caption_channels=a.caption_channels, model_max_length=a.caption_len),
        "latte": build_latte(a),
    }
    tokens = a.batch * a.frames * (a.latent // 2) ** 2
    steps, memory = {}, {}
    for name, model in models.items():
        model.to(device).train()
        steps[name] = step_fn(name, model, a, device, dtype)
        steps[name]()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            steps[name]()
            torch.cuda.synchronize()
            memory[name] = torch.cuda.max_memory_allocated()
        else:
            counter = [0]
            with saved_bytes(counter):
                steps[name]()
            memory[name] = counter[0]
    def timed(name):
        def run():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            steps[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0
        return run

    times = interleave(a.steps, {name: timed(name) for name in models})  # background load hits both alike
    print(f"config: hidden {a.hidden}, depth {a.depth}, heads {a.heads}, {a.frames}x{a.latent}x{a.latent} latents, "
          f"batch {a.batch}, {tokens} tokens/step, {a.dtype} on {device}, torch threads {torch.get_num_threads()}; "
          f"{load_average()}")
    print(f"  step times: {repeats_note(a.steps)}")
    for name, model in models.items():
        params = sum(q.numel() for q in model.parameters()) / 1e6
        ms = spread(t * 1000 for t in times[name])
        print(f"  {name:6s} {params:7.2f}M params  {ms.text('{:.1f}', ' ms/step'):>28s}  "
              f"{tokens / ms.median * 1000:10.0f} tokens/s  memory {memory[name] / 2**20:9.1f} MiB")
    print(f"ratio STDiT/Latte: time {per_repeat(times['stdit'], times['latte']).text()}, "
          f"memory {memory['stdit'] / memory['latte']:.2f} (target <= 1.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
