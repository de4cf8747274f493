"""Memory per GPU of a training step, by what holds it, and the GPUs it fits on.

Model state is counted from the parameters (fp32 master weights, gradients, AdamW's two moments, the EMA);
activations and the VAE's encode are measured in the models' own forward on fake tensors (`FakeTensorMode`:
shapes only, nothing allocated), so they follow the code: the attention kernels torch picks, what autograd
saves, what gradient checkpointing keeps.
"""

from __future__ import annotations

from collections import Counter

import torch

from trainer.encoders import SDVAE, _dtype
from trainer.estimate import Parts, bucket_shape

GiB = 2**30
# Dense (no sparsity) bf16 tensor-core peaks and memory, from each vendor's datasheet
GPUS: dict[str, dict] = {
    "L4": dict(tflops=121.0, gb=24, source="nvidia.com/en-us/data-center/l4 (242 TFLOPS with sparsity)"),
    "A10": dict(tflops=125.0, gb=24, source="nvidia.com/en-us/data-center/products/a10-gpu (250 with sparsity)"),
    "RTX4090": dict(tflops=165.2, gb=24, source="NVIDIA Ada Lovelace architecture whitepaper (FP32 accumulate)"),
    "A100-40G": dict(tflops=312.0, gb=40, source="nvidia.com/en-us/data-center/a100 (624 with sparsity)"),
    "L40S": dict(tflops=362.05, gb=48, source="nvidia.com/en-us/data-center/l40s (733 with sparsity)"),
    "A100-80G": dict(tflops=312.0, gb=80, source="nvidia.com/en-us/data-center/a100 (624 with sparsity)"),
    "H100-PCIe": dict(tflops=756.0, gb=80, source="nvidia.com/en-us/data-center/h100 (1,513 with sparsity)"),
    "H100": dict(tflops=989.5, gb=80, source="nvidia.com/en-us/data-center/h100, SXM (1,979 with sparsity)"),
    "H800": dict(tflops=989.5, gb=80, source="NVIDIA H800 SXM datasheet (1,979 with sparsity), H100's compute"),
    "H200": dict(tflops=989.5, gb=141, source="nvidia.com/en-us/data-center/h200 (1,979 with sparsity)"),
    "MI300X": dict(tflops=1307.4, gb=192, source="amd.com Instinct MI300X datasheet (2,614.9 with sparsity)"),
    "B200": dict(tflops=2250.0, gb=180, source="nvidia.com/en-us/data-center/hgx, HGX B200 (4.5 PFLOPS sparse/GPU)"),
}
USABLE = 0.9  # of a GPU's memory for tensors (the CUDA context, kernels' workspace and fragmentation take the rest)


def _precision(name: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)


def activation_bytes(parts: Parts, latent, batch: int, text_len: int, precision: str) -> dict[str, int]:
    """Bytes autograd keeps for the backward of one step at this batch (each storage once), measured in the
    model's own forward on fake tensors under the run's autocast: `full` without gradient checkpointing;
    `checkpointed` keeps each block's input and recomputes one block at a time in the backward."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        model = parts.build().train()
        C, t, h, w = latent
        args = (torch.randn(batch, C, t, h, w), torch.rand(batch) * 1000, torch.randn(batch, text_len,
                parts.text_channels), torch.ones(batch, text_len, dtype=torch.bool))
        saved, owner, inputs = {}, [None], []

        def pack(x):
            st = x.untyped_storage()
            saved.setdefault(st._cdata, (st.nbytes(), owner[0]))
            return x

        def enter(i):
            def hook(_, a):
                owner[0] = i
                inputs.append(a[0].untyped_storage().nbytes())
            return hook
        handles = [b.register_forward_pre_hook(enter(i)) for i, b in enumerate(model.blocks)]
        handles += [b.register_forward_hook(lambda *_: owner.__setitem__(0, None)) for b in model.blocks]
        dtype = _precision(precision)
        amp = torch.autocast("cpu", dtype=dtype) if dtype else torch.enable_grad()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), amp:
            model(*args, force_drop=torch.zeros(batch, dtype=torch.bool))
        for handle in handles:
            handle.remove()
    per_block = Counter()
    for nbytes, who in saved.values():
        per_block[who] += nbytes
    outside = per_block.pop(None, 0)
    y_and_t = batch * text_len * model.config.hidden_size * 4 + batch * 6 * model.config.hidden_size * 4
    return {"full": outside + sum(per_block.values()),
            "checkpointed": outside + sum(inputs) + y_and_t + max(per_block.values(), default=0)}


def vae_encode_bytes(parts: Parts, bucket, batch: int) -> int:
    """Peak memory of the VAE's encode of one batch (no gradients), from its real forward on fake tensors: SD-VAE
    encodes vae.micro_batch frames at a time, a video VAE the batch (one video with vae.slicing; vae.tiling
    lowers it further, not counted here)."""
    if parts.vae_model is None:
        return 0
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    T, H, W = (int(v) for v in bucket)
    opts = parts.cfg["vae"]
    dtype = _dtype(opts.get("dtype")) or torch.float32
    with FakeTensorMode():
        model = type(parts.vae_model).from_config(parts.vae_model.config).eval()
        for p in model.parameters():  # (Module.to cannot swap fake parameters)
            p.data = p.data.to(dtype)
        if isinstance(parts.vae, SDVAE):
            x = torch.randn(min(int(opts.get("micro_batch", 16)), batch * T), 3, H, W, dtype=dtype)
        else:
            x = torch.randn(1 if opts.get("slicing") else batch, 3, T, H, W, dtype=dtype)
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker, torch.no_grad():
            model.encode(x)
        peak = tracker.get_tracker_snapshot("peak")
    return int(sum(v.get("Total", 0) for v in peak.values())) - dtype.itemsize * parts.params()["vae"]


def memory(parts: Parts, bucket, gpus: int = 1, strategy: str = "ddp", features: bool = False) -> dict:
    """Bytes per GPU of one training step at the config's batch: `parts` by what holds them (fp32 master
    weights, gradients, AdamW's two moments and the EMA, sharded over the GPUs under FSDP, which gathers two
    blocks at a time; the frozen text encoder in fp32 as train loads it, the VAE and its encode, or neither with
    pre-extracted features), `activations` with and without gradient checkpointing, and the `total` as the
    config runs (its gradient checkpointing)."""
    cfg, P = parts.cfg, parts.params()["stdit"]
    shard, B = (gpus if strategy == "fsdp" else 1), cfg["data"]["batch_size"]
    memo = parts.__dict__.setdefault("_measured", {})  # the fake runs of a bucket serve DDP and FSDP alike
    if tuple(bucket) not in memo:
        latent = bucket_shape(parts.model, parts.vae, bucket)["latent"]
        memo[tuple(bucket)] = (activation_bytes(parts, latent, B, cfg["text"]["max_length"],
                                                cfg["train"]["mixed_precision"]), vae_encode_bytes(parts, bucket, B))
    act, encode = memo[tuple(bucket)]
    out = {"weights (fp32)": 4 * P // shard, "gradients (fp32)": 4 * P // shard,
           "AdamW moments (fp32)": 8 * P // shard, "EMA (fp32)": 4 * P // shard}
    if strategy == "ddp" and gpus > 1:
        out["DDP gradient buckets"] = 4 * P
    if strategy == "fsdp":
        out["FSDP gathered blocks (2)"] = 2 * 4 * sum(p.numel() for p in parts.model.blocks[0].parameters())
    vae_bytes = (_dtype(cfg["vae"].get("dtype")) or torch.float32).itemsize
    out["text encoder (frozen)"] = 0 if features else 4 * parts.params()["text_encoder"]
    out["VAE (frozen) and its encode"] = 0 if features else vae_bytes * parts.params()["vae"] + encode
    chosen = act["checkpointed" if cfg["model"]["gradient_checkpointing"] else "full"]
    return {"parts": out, "activations": act, "total": sum(out.values()) + chosen}


def smallest_gpu(total_bytes: int) -> str | None:
    fits = [n for n, g in GPUS.items() if total_bytes <= USABLE * g["gb"] * GiB]
    return min(fits, key=lambda n: (GPUS[n]["gb"], GPUS[n]["tflops"])) if fits else None
