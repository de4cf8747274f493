"""What a training config costs, from the trainer's own parts: tokens per sample from the VAE's `latent_shape`
and the model's `num_tokens`, parameters of the STDiT, text encoder and VAE built on the meta device (no
weights, no memory), forward and backward FLOPs per sample counted from the model's layers (trainer/memory.py
adds memory per GPU).

Published models need no download: their config.json fields are in `KNOWN_CONFIGS`; any other hub id or folder
is read from its own config.json (a local folder, the Hugging Face cache, or that one small file from the hub).

`RunPlan` is what `train` prints at its start and writes to RUN/plan.json.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch

from trainer.checkpoints import build_model
from trainer.encoders import VAES, PixelsVAE, SDVAE, VideoVAE

# config.json fields of published models (from their Hugging Face repositories), so a plan needs no download
_SD_VAE = {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512], "latent_channels": 4,
           "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
           "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 256}  # huggingface.co/stabilityai/sd-vae-ft-ema
_T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 32128,
           "feed_forward_proj": "gated-gelu"}  # huggingface.co/DeepFloyd/t5-v1_1-xxl (= google/t5-v1_1-xxl)
KNOWN_CONFIGS = {"stabilityai/sd-vae-ft-ema": _SD_VAE, "stabilityai/sd-vae-ft-mse": _SD_VAE,
                 "DeepFloyd/t5-v1_1-xxl": _T5_XXL, "google/t5-v1_1-xxl": _T5_XXL}


class EstimateError(ValueError):
    """A model whose size cannot be known here, in one line (a usage error: exit code 2)."""


def model_config(path, subfolder=None, what: str = "model") -> dict:
    """config.json of a folder, a published model (KNOWN_CONFIGS) or a hub id (the local cache, else the hub)."""
    if path is None:
        raise EstimateError(f"{what}: no path set")
    name = "config.json" if not subfolder else f"{subfolder}/config.json"
    folder = Path(str(path)).expanduser()
    if folder.is_dir():
        if not (folder / name).is_file():
            raise EstimateError(f"{what} {path}: no {name} in the folder")
        return json.loads((folder / name).read_text())
    if str(path) in KNOWN_CONFIGS and not subfolder:
        return dict(KNOWN_CONFIGS[str(path)])
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from index.hub import offline

    cached = try_to_load_from_cache(str(path), name)
    if not isinstance(cached, str) and not offline():
        try:
            cached = hf_hub_download(str(path), name)
        except Exception:  # noqa: BLE001 (a missing repository, no access, no network: the message below says)
            cached = None
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text())
    raise EstimateError(f"{what} {path}: cannot read its {name} (not in the local Hugging Face cache); fetch it with "
                        f"`hf download {path} {name}`, or pass a local folder")


def _meta(fn):
    with torch.device("meta"):
        return fn()


def vae_without_weights(vae_cfg: dict) -> tuple[VideoVAE, torch.nn.Module | None]:
    """(the run's VAE class with its geometry but no weights, so its own `latent_shape` answers; the diffusers
    model on the meta device, for its parameter count; None for pixels)."""
    import diffusers

    opts = {k: v for k, v in vae_cfg.items() if k != "kind"}
    kind, cls = vae_cfg["kind"], VAES[vae_cfg["kind"]]
    if cls is PixelsVAE:
        return PixelsVAE(), None
    conf = model_config(opts.get("path"), opts.get("subfolder"), "vae.path")
    if cls is SDVAE:
        model = _meta(lambda: diffusers.AutoencoderKL.from_config(conf))
        geometry = (conf.get("latent_channels", 4), 2 ** (len(conf["block_out_channels"]) - 1), 1, 1)  # as SDVAE
    else:
        model = _meta(lambda: getattr(diffusers, cls.model_class).from_config(conf))
        geometry = cls.geometry(model)
    vae = cls.__new__(cls)  # the class's own methods, without loading its weights
    torch.nn.Module.__init__(vae)
    vae.channels, vae.factor, vae.time_factor, vae.frame_step = (int(g) for g in geometry)
    return vae, model


def text_without_weights(text_cfg: dict) -> tuple[int, object]:
    """(output channels, a function building the text encoder on the meta device) of the run's text section."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if text_cfg["kind"] == "tiny" and not text_cfg.get("path"):
        import contextlib
        import io
        import tempfile

        from trainer.testing import make_tiny_t5

        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
            conf = model_config(make_tiny_t5(tmp), what="text.path")  # what train builds for text.kind=tiny
    else:
        conf = model_config(text_cfg["path"], what="text.path")
    conf = {k: v for k, v in conf.get("text_config", conf).items() if not k.startswith("_")}
    if text_cfg["kind"] == "clip":
        conf = CLIPTextConfig(**conf)
        return conf.hidden_size, lambda: _meta(lambda: CLIPTextModel(conf))
    conf = T5Config(**conf)
    return conf.d_model, lambda: _meta(lambda: T5EncoderModel(conf))


class Parts:
    """The run's STDiT, VAE and text encoder, sized from the config without a weight in memory."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.vae, self.vae_model = vae_without_weights(cfg["vae"])
        self.text_channels, self._text = text_without_weights(cfg["text"])
        self.model = _meta(self.build)
        self._params = None

    def build(self):
        return build_model(self.cfg, self.vae.channels, self.text_channels)

    def params(self) -> dict[str, int]:
        """Parameters of each part (the text encoder is built on the meta device the first time)."""
        if self._params is None:
            count = lambda m: 0 if m is None else sum(p.numel() for p in m.parameters())  # noqa: E731
            self._params = {"stdit": count(self.model), "text_encoder": count(self._text()),
                            "vae": count(self.vae_model)}
        return self._params


def bucket_shape(model, vae: VideoVAE, bucket) -> dict:
    """The latent (C, t, h, w) of a [frames, height, width] bucket, its token grid and tokens per sample."""
    latent = vae.latent_shape(*(int(v) for v in bucket))
    grid = tuple(-(-n // p) for n, p in zip(latent[1:], model.patch_size))
    tokens = model.num_tokens(*latent[1:])
    return {"latent": latent, "grid": grid, "tokens": tokens}


ATTENTION = ("spatial_attention", "temporal_attention", "cross_attention")
FORWARD = ("patch_embed", "timestep", "caption", "blocks_linear", "final", *ATTENTION)


def forward_flops(model, grid, text_len: int) -> dict[str, int]:
    """Forward FLOPs of one sample (a multiply-add is 2) by layer kind, from the model's config: every Linear and
    Conv3d, and the attention products (QK^T and AV). `full_attention` is what one attention over all N tokens
    (DiT's) would cost in place of the spatial and temporal ones: the difference is why STDiT exists.

    By `conditioning`: cross_attn projects queries and outputs of the N video tokens and keys and values of the
    L caption tokens in every block, and attends N x L; adaln projects one pooled caption vector and has no
    caption attention, but a 6D modulation layer per block (and 2D for the final layer) instead of one shared;
    in_context projects the caption's keys and values in every block and each frame attends S x (S + L)."""
    c = model.config
    D, M, L, Ct = c.hidden_size, int(c.hidden_size * c.mlp_ratio), text_len, c.caption_channels
    nt, nh, nw = grid
    S, N, P = nh * nw, nt * nh * nw, math.prod(model.patch_size)
    kind = getattr(c, "conditioning", "cross_attn")
    block = 2 * N * 4 * D * D * 2 + 2 * N * 2 * D * M  # spatial and temporal attention's projections, mlp
    caption_keys = S + L if kind == "in_context" else S
    if kind == "cross_attn":
        block += 2 * N * 2 * D * D + 2 * L * 2 * D * D  # queries and output of the video, keys and values of the text
    elif kind == "in_context":
        block += 2 * L * 2 * D * D  # the caption's keys and values
    modulation = c.depth * 6 * D * D + 2 * D * D if kind == "adaln" else 6 * D * D
    return {"patch_embed": 2 * N * D * c.in_channels * P, "timestep": 2 * (256 * D + D * D + modulation),
            "caption": 2 * (1 if kind == "adaln" else L) * (Ct * D + D * D), "blocks_linear": c.depth * block,
            "final": 2 * N * D * P * model.out_channels,
            "spatial_attention": c.depth * 4 * N * caption_keys * D,  # per frame, over its S tokens (+ the caption's)
            "temporal_attention": c.depth * 4 * N * nt * D,  # per position, over its nt frames
            "cross_attention": c.depth * 4 * N * L * D if kind == "cross_attn" else 0,
            "full_attention": c.depth * 4 * N * N * D}


def train_flops(fwd: dict, checkpointing: bool, hidden_size: int) -> dict[str, int]:
    """FLOPs of one training sample. `model`: forward and backward, a backward being twice its forward less the
    input gradients nothing asks for (the video's at the patch embedding, the sinusoid's at the timestep MLP);
    MFU counts these. `hardware` adds the blocks' forward again when gradient checkpointing recomputes them."""
    forward = sum(fwd[k] for k in FORWARD)
    model = 3 * forward - fwd["patch_embed"] - 2 * 256 * hidden_size
    blocks = fwd["blocks_linear"] + sum(fwd[k] for k in ATTENTION)
    return {"forward": forward, "model": model, "hardware": model + (blocks if checkpointing else 0)}




def bucket_counts(shapes, buckets) -> list[int]:
    """Clips per bucket as the trainer's sampler assigns them ((frames, height, width) of each clip, or a
    {shape: count} mapping)."""
    from trainer.data import BucketSampler

    sampler = BucketSampler([], buckets, 1)
    counts = [0] * len(buckets)
    for shape, n in (shapes if isinstance(shapes, dict) else Counter(map(tuple, shapes))).items():
        counts[sampler.assign(*(int(v) for v in shape))] += int(n)
    return counts


def batches_per_epoch(counts, batch_size: int, world: int = 1) -> int:
    """Batches each process trains per epoch, as `BucketSampler` makes them (every bucket's last batch topped
    up, every process given the same count)."""
    total = sum(-(-n // batch_size) for n in counts)
    return -(-total // world)


class RunPlan:
    """What a run of this config costs: per bucket (clips, latent, tokens and FLOPs per sample), per optimizer
    step and for an epoch of the data. Without data the buckets count alike. `train` prints `line()` at its start,
    `measured()` once it has a rate, and writes `info` to RUN/plan.json; `plan` builds on the same numbers."""

    def __init__(self, cfg: dict, vae, model, world: int = 1, shapes=None):
        dc, L, ckpt = cfg["data"], cfg["text"]["max_length"], cfg["model"]["gradient_checkpointing"]
        counts = bucket_counts(shapes, dc["buckets"]) if shapes else None
        self.buckets = []
        for i, b in enumerate(dc["buckets"]):
            try:
                row = {"bucket": list(b), **bucket_shape(model, vae, b)}
            except ValueError as e:
                raise ValueError(f"data.buckets[{i}] {list(b)}: {e}") from None
            row["forward_flops"] = forward_flops(model, row.pop("grid"), L)
            row |= train_flops(row["forward_flops"], ckpt, model.config.hidden_size)
            if counts is not None:
                row |= {"clips": counts[i], "dataset_tokens": counts[i] * row["tokens"]}
            self.buckets.append(row)
        batches = [-(-n // dc["batch_size"]) for n in counts] if counts and any(counts) else [1] * len(dc["buckets"])
        share = [n / sum(batches) for n in batches]  # a step's batch comes from one bucket, as often as it has batches
        self.batch_size, self.world = dc["batch_size"], world
        self.samples_per_step = dc["batch_size"] * world * cfg["optim"]["grad_accum"]
        self.steps = cfg["train"]["max_steps"]
        self.tokens_per_sample = sum(s * b["tokens"] for s, b in zip(share, self.buckets))
        self.flops_per_sample = sum(s * b["model"] for s, b in zip(share, self.buckets))
        self.epoch_steps = (batches_per_epoch(counts, dc["batch_size"], world) / cfg["optim"]["grad_accum"]
                            if counts and any(counts) else None)
        self.info = {"buckets": [{k: b[k] for k in ("bucket", "latent", "tokens", "model", "clips") if k in b}
                                 for b in self.buckets], "processes": world, "samples_per_step": self.samples_per_step,
                     "tokens_per_step": round(self.samples_per_step * self.tokens_per_sample),
                     "train_flops_per_step": round(self.samples_per_step * self.flops_per_sample),
                     "steps": self.steps, "params": sum(p.numel() for p in model.parameters())}

    def line(self) -> str:
        i = self.info
        return (f"plan: {i['tokens_per_step']:,} tokens/step ({i['samples_per_step']} samples x "
                f"{self.tokens_per_sample:,.0f} tokens), {i['train_flops_per_step']:.3g} FLOPs/step, {self.steps:,} "
                f"steps = {i['tokens_per_step'] * self.steps:.3g} tokens, {i['train_flops_per_step'] * self.steps:.3g}"
                " FLOPs")

    def measured(self, step: int, samples_per_s: float) -> str:
        """The rate seen at `step` (samples/s over all processes) and the time to the configured steps at it."""
        left = max(0, self.steps - step) * self.samples_per_step / max(samples_per_s, 1e-12)
        self.info["measured"] = {"step": step, "samples_per_s": samples_per_s,
                                 "tokens_per_s_per_process": samples_per_s * self.tokens_per_sample / self.world,
                                 "seconds_to_max_steps": left}
        when = f"{left:.0f} s" if left < 120 else f"{left / 60:.0f} min" if left < 7200 else f"{left / 3600:,.1f} h"
        return (f"plan: measured by step {step}: {samples_per_s:.3g} samples/s = "
                f"{self.info['measured']['tokens_per_s_per_process']:,.0f} tokens/s per process; "
                f"{max(0, self.steps - step):,} steps left = {when} at this rate")

    def write(self, out_dir) -> Path:
        from index.files import atomic_write_text

        return atomic_write_text(Path(out_dir) / "plan.json", json.dumps(self.info, indent=1) + "\n")
