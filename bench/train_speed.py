"""Training speed and memory: STDiT against diffusers' LatteTransformer3DModel of the same size, in the same run.

A step is what the trainer does per batch: forward, backward and an AdamW step, under autocast for bf16/fp16
(fp32 master weights, as Accelerate's mixed precision), with gradient checkpointing on both models by default
(Open-Sora 1.0's recipe). Both models get the size's width, depth (STDiT blocks vs Latte spatial + temporal
block pairs), heads and patch, the same latents (input / VAE factor), caption length and batch. Printed per
model: median step time, tokens/s/GPU (tokens = latent frames x latent patches x batch), peak memory (CUDA:
peak allocated during the steps; CPU: bytes autograd saves for backward, a deterministic proxy); then the
STDiT/Latte ratios and, for scale, Open-Sora 1.0's published 28k tokens/s/GPU (H800, with its acceleration
stack: ZeRO-2, flash attention, fused layer norm; a different GPU and stack, not a same-run comparison).

    python bench/train_speed.py --device cuda --dtype bf16 --size STDiT-XL/2 --input 16x256x256   # < 8 minutes
    python bench/train_speed.py --dry-run                         # CPU, STDiT-T/2 at 4x32x32: checks the script
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.model import STDIT_SIZES, build_stdit  # noqa: E402

OPENSORA_TOKENS_PER_S_PER_GPU = 28_000  # Open-Sora 1.0's published training throughput (H800)


def build(name: str, a, size: dict, latent: tuple[int, int, int]):
    T, h, w = latent
    if name == "stdit":
        model = build_stdit(None, in_channels=4, patch_size=size["patch_size"], hidden_size=size["hidden_size"],
                            depth=size["depth"], num_heads=size["num_heads"], caption_channels=a.caption_channels,
                            model_max_length=a.caption_len)
    else:
        from diffusers import LatteTransformer3DModel

        if h != w:
            raise SystemExit("Latte's position table is square: give an input with height == width")
        model = LatteTransformer3DModel(
            num_attention_heads=size["num_heads"], attention_head_dim=size["hidden_size"] // size["num_heads"],
            in_channels=4, out_channels=4, num_layers=size["depth"], cross_attention_dim=size["hidden_size"],
            attention_bias=True, sample_size=h, patch_size=size["patch_size"][1], activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
            caption_channels=a.caption_channels, video_length=T)
    if a.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


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


def make_step(name, model, a, latent, device, dtype):
    T, h, w = latent
    B, L = a.batch, a.caption_len
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(B, 4, T, h, w, generator=g).to(device)
    t = torch.randint(0, 1000, (B,), generator=g).to(device)
    y = torch.randn(B, L, a.caption_channels, generator=g).to(device)
    mask = torch.ones(B, L, dtype=torch.bool, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    def step():
        with autocast:
            if name == "stdit":
                out = model(x, t.float(), y, mask)
            else:  # Latte's pipeline passes no caption mask (its mask path breaks with frames): all tokens valid
                out = model(x, timestep=t, encoder_hidden_states=y, return_dict=False)[0]
        out.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def measure(name, a, size, latent, device, dtype, deadline: float) -> dict:
    """Build one model on the device, warm up, time steps until --steps or the deadline; then free it."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: an XL model on the CPU takes minutes
        model = build(name, a, size, latent).train()
    params = sum(p.numel() for p in model.parameters())
    try:
        step = make_step(name, model, a, latent, device, dtype)
        for _ in range(a.warmup):
            step()
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = 0
        else:
            counter = [0]
            with saved_bytes(counter):
                step()
            base = counter[0]
        times = []
        while len(times) < a.steps and (len(times) < 3 or time.perf_counter() < deadline):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        memory = torch.cuda.max_memory_allocated() if device.type == "cuda" else base
        return {"params": params, "times": times, "memory": memory}
    except torch.cuda.OutOfMemoryError:
        return {"params": params, "times": [], "memory": float("nan"), "error": "out of memory"}
    finally:
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def parse_input(text: str) -> tuple[int, int, int]:
    try:
        T, H, W = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FRAMESxHEIGHTxWIDTH, e.g. 16x256x256") from None
    return T, H, W


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", default="STDiT-XL/2", choices=sorted(STDIT_SIZES), help="model size (both models)")
    p.add_argument("--input", type=parse_input, default=(16, 256, 256), help="video FRAMESxHEIGHTxWIDTH in pixels")
    p.add_argument("--vae-factor", type=int, default=8, help="spatial compression of the VAE (SD-VAE: 8)")
    p.add_argument("--batch", type=int, default=8, help="clips per step (Open-Sora 1.0 stage 1: 8 per GPU)")
    p.add_argument("--caption-len", type=int, default=120, help="text tokens")
    p.add_argument("--caption-channels", type=int, default=4096, help="text encoder width (T5-XXL: 4096)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute blocks in backward (both models)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    p.add_argument("--steps", type=int, default=10, help="timed steps per model")
    p.add_argument("--budget-s", type=float, default=360.0, help="stop timing (after 3 steps) past this many "
                   "seconds of the run, so the whole command stays under 8 minutes")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast precision")
    p.add_argument("--dry-run", action="store_true", help="CPU, STDiT-T/2, 4x32x32, batch 2, 2 steps")
    a = p.parse_args(argv)
    if a.dry_run:
        a.device, a.size, a.input, a.batch, a.warmup, a.steps, a.caption_len = "cpu", "STDiT-T/2", (4, 32, 32), 2, 1, 2, 16
        a.caption_channels = 64
    start = time.perf_counter()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    size = STDIT_SIZES[a.size]
    T, H, W = a.input
    if H % a.vae_factor or W % a.vae_factor:
        raise SystemExit(f"--input {H}x{W} is not a multiple of --vae-factor {a.vae_factor}")
    latent = (T, H // a.vae_factor, W // a.vae_factor)
    pt, ph, pw = size["patch_size"]
    tokens = a.batch * -(-latent[0] // pt) * -(-latent[1] // ph) * -(-latent[2] // pw)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{a.size} (hidden {size['hidden_size']}, depth {size['depth']}, heads {size['num_heads']}), input "
          f"{T}x{H}x{W} -> latents {latent[0]}x{latent[1]}x{latent[2]}, batch {a.batch}, {tokens} tokens/step, "
          f"{a.dtype}, gradient checkpointing {'on' if a.gradient_checkpointing else 'off'}, on {where}")
    deadline = start + a.budget_s
    results = {name: measure(name, a, size, latent, device, dtype, deadline) for name in ("stdit", "latte")}
    speed = {}
    memory_label = "peak memory" if device.type == "cuda" else "saved for backward"
    for name, r in results.items():
        if not r["times"]:
            print(f"  {name:6s} {r['params'] / 1e6:8.1f}M params  {r.get('error', 'no steps')}")
            continue
        med = statistics.median(r["times"])
        spread = (max(r["times"]) - min(r["times"])) / med if len(r["times"]) > 1 else 0.0
        speed[name] = tokens / med
        print(f"  {name:6s} {r['params'] / 1e6:8.1f}M params  {med * 1000:9.1f} ms/step (median of {len(r['times'])},"
              f" spread {spread:.0%})  {speed[name]:10.0f} tokens/s/GPU  {memory_label} {r['memory'] / 2**20:9.1f} MiB")
    if len(speed) == 2:
        mem = results["stdit"]["memory"] / results["latte"]["memory"]
        print(f"ratio STDiT/Latte: speed {speed['stdit'] / speed['latte']:.2f}x, memory {mem:.2f}x")
    if "stdit" in speed:
        print(f"reference: Open-Sora 1.0 published {OPENSORA_TOKENS_PER_S_PER_GPU:,} tokens/s/GPU (H800, its "
              f"acceleration stack); STDiT here {speed['stdit'] / OPENSORA_TOKENS_PER_S_PER_GPU:.2f}x of it")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
