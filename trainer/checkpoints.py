"""A run's checkpoints: writing and resuming them, the EMA, and finding weights to start or sample from.

    RUN/config.yaml                      the resolved config of the run (printed at its start too)
    RUN/metrics.jsonl                    one line per logged step
    RUN/checkpoints/STEP/                named by optimizer step; complete or absent (written as .tmp-STEP, renamed)
        model.safetensors, optimizer.bin, random_states_*.pkl ...   Accelerate's state, for --resume
        resume_state.json                step, data position, EMA update count
        model/, ema/                     STDiT folders (config.json + safetensors): sample, --init-from
        config.yaml                      the run's config; text_encoder/ for text.kind=tiny

`find_weights` resolves what `--init-from` and `sample --ckpt` accept: a model folder (`python -m
trainer.convert` output, or a checkpoint's ema/ or model/), a checkpoint folder (its EMA), a run folder (its
latest checkpoint) or, for --init-from, an Open-Sora 1.0 / PixArt-alpha file converted on the fly.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from index.engine import UsageError  # a user mistake: one line, exit code 2
from index.files import atomic_write_text

WEIGHTS = "diffusion_pytorch_model.safetensors"  # diffusers' file name: STDiT.from_pretrained reads it
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


class TrainState:
    """Optimizer step and data position, saved with every checkpoint."""

    def __init__(self):
        self.step, self.epoch, self.position = 0, 0, 0

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch, self.position = int(state["step"]), int(state["epoch"]), int(state["position"])


def _local(p: torch.Tensor) -> torch.Tensor:
    """A parameter's own part: the local shard of an FSDP2 (DTensor) parameter, else the tensor."""
    return p.to_local() if hasattr(p, "to_local") else p


class EMA:
    """fp32 moving average of the trained parameters, shard by shard under FSDP2.

    The decay ramps up as diffusers' EMAModel does: 0 at the first update (a copy), then
    min(decay, (1 + n) / (10 + n)) at update n + 1, so a short run still averages."""

    def __init__(self, params, decay: float):
        self.decay, self.updates = float(decay), 0
        self.shadow = [_local(p).detach().float().clone() for p in params]

    def current_decay(self) -> float:
        n = self.updates - 1
        return 0.0 if n <= 0 else min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def step(self, params) -> None:
        self.updates += 1
        keep = self.current_decay()
        for s, p in zip(self.shadow, params):
            s.sub_((1 - keep) * (s - _local(p).float()))

    def full_state(self, named_params) -> dict[str, torch.Tensor]:
        """{name: full tensor} (collective under FSDP2: every process calls it)."""
        out = {}
        for (name, p), s in zip(named_params, self.shadow):
            if hasattr(p, "device_mesh"):
                from torch.distributed.tensor import DTensor

                s = DTensor.from_local(s, p.device_mesh, p.placements, shape=p.shape, stride=p.stride()).full_tensor()
            out[name] = s.detach().cpu().contiguous()
        return out

    def load_full_state(self, named_params, state: dict[str, torch.Tensor], updates: int) -> None:
        for i, (name, p) in enumerate(named_params):
            full = state[name].float()
            if hasattr(p, "device_mesh"):
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full.to(p.device), p.device_mesh, p.placements).to_local()
            self.shadow[i] = full.to(self.shadow[i].device).clone()
        self.updates = int(updates)


def save_model_folder(folder: Path, model, state: dict[str, torch.Tensor]) -> None:
    """An STDiT folder (`model`'s config.json + `state` as safetensors) that `STDiT.from_pretrained` loads."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / WEIGHTS))
    model.save_config(str(folder))


def checkpoints(out_dir: Path) -> list[Path]:
    root = Path(out_dir) / "checkpoints"
    found = [p for p in root.glob("*") if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name))


def save_checkpoint(accelerator, out_dir: Path, step: int, model, ema: EMA, state: TrainState, cfg: dict,
                    text_path, keep_last: int) -> Path:
    """Every process calls this (the state dicts are collective under FSDP); the main process writes."""
    root = out_dir / "checkpoints"
    tmp, final = root / f".tmp-{step}", root / str(step)
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model, optimizer, and every process's RNG state
    weights = accelerator.get_state_dict(model)
    inner = accelerator.unwrap_model(model)
    ema_weights = ema.full_state(list(inner.named_parameters()))
    if accelerator.is_main_process:
        save_model_folder(tmp / "model", inner, weights)
        save_model_folder(tmp / "ema", inner, ema_weights)  # fp32, loadable by `sample` alone
        (tmp / "resume_state.json").write_text(json.dumps({"train": state.state_dict(), "ema_updates": ema.updates}))
        (tmp / "config.yaml").write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
        if cfg["text"]["kind"] == "tiny":
            shutil.copytree(text_path, tmp / "text_encoder")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # a checkpoint is complete or absent
        older = [c for c in checkpoints(out_dir) if int(c.name) < step]  # never the one just written
        for old in older[:max(0, len(older) - (keep_last - 1))] if keep_last > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resume_step(ckpt: Path) -> int:
    return int(json.loads((ckpt / "resume_state.json").read_text())["train"]["step"])


def load_resume_state(ckpt: Path, accelerator, model, ema: EMA, state: TrainState) -> None:
    accelerator.load_state(str(ckpt))  # tensors only (weights_only=True)
    meta = json.loads((ckpt / "resume_state.json").read_text())
    named = list(accelerator.unwrap_model(model).named_parameters())
    updates = meta.get("ema_updates", meta.get("ema", {}).get("optimization_step", 0))  # (older checkpoints)
    ema.load_full_state(named, load_file(str(ckpt / "ema" / WEIGHTS)), updates)
    state.load_state_dict(meta["train"])


def trim_metrics(path: Path, step: int) -> int:
    """Keep the lines of steps <= `step` (those after are trained again) and drop a line torn by a kill;
    returns the number of lines dropped."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ok = json.loads(line)["step"] <= step
        except (ValueError, KeyError, TypeError):
            ok = False  # a half-written line
        if ok:
            kept.append(line)
        elif line.strip():
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))
    return dropped


def logged_losses(path: Path) -> list[float]:
    """The losses of metrics.jsonl (after `trim_metrics`), oldest first; [] without a file."""
    if not path.exists():
        return []
    return [float(json.loads(line)["loss"]) for line in path.read_text().splitlines() if line.strip()]


class SpikeWatch:
    """Flags a logged loss above `factor` times the median of the last `window` logged losses (a run that starts
    to diverge), once `window // 4` are known (`history`: those of a resumed run); a non-finite loss always."""

    def __init__(self, factor: float, history=(), window: int = 20):
        self.factor, self.window = float(factor), int(window)
        self.recent = [v for v in history if math.isfinite(v)][-self.window:]

    def check(self, loss: float) -> str | None:
        """What is wrong with `loss` in one phrase, or None; a finite `loss` joins the window."""
        if not math.isfinite(loss):
            return f"the loss is {loss}"
        median = statistics.median(self.recent) if len(self.recent) >= max(1, self.window // 4) else None
        self.recent = (self.recent + [loss])[-self.window:]
        if self.factor and median is not None and loss > self.factor * median:
            return f"{loss:.4g} is {loss / median:.1f}x the median {median:.4g} of the last {self.window} logged"
        return None


# ---------------------------------------------------------------- weights to start or sample from

@dataclass
class Weights:
    kind: str  # "folder" (config.json + safetensors) or "file" (to convert)
    path: Path
    checkpoint: Path | None = None  # the shotcap checkpoint it belongs to (its config.yaml), if any


def describe_checkpoints(run: Path) -> str:
    found = checkpoints(run)
    if not found:
        return f"{run} has no checkpoints yet"
    return f"{run} has checkpoints {', '.join(c.name for c in found)} (latest: {found[-1]})"


def find_weights(path, use_ema: bool = True, allow_file: bool = True) -> Weights:
    """Resolve a model folder, a checkpoint, a run folder (latest checkpoint) or a weights file; UsageError
    (naming what exists) otherwise."""
    p = Path(path)
    if not p.exists():
        run = p.parent.parent if p.parent.name == "checkpoints" else None
        hint = f"; {describe_checkpoints(run)}" if run is not None and run.is_dir() else ""
        raise UsageError(f"{p}: no such checkpoint{hint}")
    if p.is_file():
        if allow_file and p.suffix in FILE_SUFFIXES:
            return Weights("file", p)
        raise UsageError(f"{p}: not a model folder, checkpoint or run folder"
                         + (f" (weights files end in {', '.join(FILE_SUFFIXES)})" if allow_file else ""))
    if (p / "config.json").is_file() and any(p.glob("diffusion_pytorch_model*.safetensors")):
        return Weights("folder", p, p.parent if (p.parent / "config.yaml").is_file() else None)
    if (p / "config.yaml").is_file() and ((p / "ema").is_dir() or (p / "model").is_dir()):
        sub = p / "ema" if use_ema and (p / "ema").is_dir() else p / "model"
        return Weights("folder", sub, p)
    if (p / "checkpoints").is_dir() or (p / "metrics.jsonl").exists():
        found = checkpoints(p)
        if not found:
            raise UsageError(f"{p}: the run has no checkpoints yet")
        return find_weights(found[-1], use_ema, allow_file)
    raise UsageError(f"{p}: not a model folder (config.json), a checkpoint (config.yaml) or a run folder "
                     "(checkpoints/)")


def check_hub_model(model_id, what: str) -> None:
    """A local folder must exist; a hub id must be in the cache when the hub cannot be reached."""
    from index.hub import is_cached, local_only, missing_model_message

    if not model_id:
        return
    if str(model_id).startswith((".", "/", "~")) or str(model_id).count("/") > 1:
        if not Path(model_id).expanduser().exists():
            raise UsageError(f"{what} {model_id}: no such folder")
        return
    try:
        cached = is_cached(model_id)
    except ValueError:  # not a valid hub id
        raise UsageError(f"{what} {model_id}: neither a folder nor a Hugging Face model id") from None
    if local_only(model_id) and not cached:
        raise UsageError(f"{what}: {missing_model_message(model_id)}")


def load_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(STDiT config, state dict) of a model folder."""
    from trainer.model import STDiT

    config = {k: v for k, v in STDiT.load_config(str(folder)).items() if not k.startswith("_")}
    state: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("diffusion_pytorch_model*.safetensors")):
        state.update(load_file(str(f)))
    return config, state


# ---------------------------------------------------------------- the model to train

ARCH_KEYS = ("hidden_size", "depth", "num_heads", "patch_size", "mlp_ratio", "pred_sigma", "class_dropout_prob",
             "space_scale", "time_scale", "base_size", "conditioning")


def run_model_keys(model_cfg: dict, explicit: set) -> dict:
    """The STDiT arguments a run's model section sets itself (`size` stands for its depth, width, heads, patch)."""
    from trainer.model import STDIT_SIZES

    out = dict(STDIT_SIZES[model_cfg["size"]]) if "model.size" in explicit else {}
    for key in ARCH_KEYS:
        if f"model.{key}" in explicit and (model_cfg[key] is not None or key == "base_size"):
            out[key] = model_cfg[key]
    return out


def build_model(cfg: dict, in_channels: int, caption_channels: int):
    """A fresh STDiT from the run's config."""
    from trainer.model import build_stdit

    m = cfg["model"]
    pooling = "last" if cfg["text"]["kind"] == "clip" else "mean"  # CLIP's pooled output: its last real token
    return build_stdit(m["size"], in_channels=in_channels, caption_channels=caption_channels,
                       model_max_length=cfg["text"]["max_length"], text_pooling=pooling,
                       **{k: m[k] for k in ARCH_KEYS if k != "base_size"}, base_size=m["base_size"])


def init_model(path, cfg: dict, explicit: set, in_channels: int, caption_channels: int):
    """(STDiT with the weights at `path`, one line saying where its config came from).

    The architecture is the weights' own (their config.json, or the shapes of a converted file), except for the
    model keys the run's config sets explicitly, which win; the VAE and text encoder fix the input and caption
    channels. Weights that do not fit the resulting model are refused with the keys that differ. The run's
    model section is updated to the model actually built (it is saved with every checkpoint)."""
    from trainer.model import STDiT

    found = find_weights(path)
    own = run_model_keys(cfg["model"], explicit)
    if found.kind == "file":
        from trainer.convert import convert, load_state_dict

        try:
            converted = convert(load_state_dict(found.path), "auto", own.get("num_heads"), own.get("space_scale"),
                                own.get("time_scale"), own.get("base_size"))
        except ValueError as e:
            raise UsageError(f"--init-from {found.path}: {e}".replace("give --space-scale", "set model.space_scale")
                             .replace("give --time-scale", "set model.time_scale")
                             .replace("give --base-size", "set model.base_size")
                             .replace("give --num-heads", "set model.num_heads")) from None
        theirs, state = {k: v for k, v in converted.config.items() if not k.startswith("_")}, converted.state_dict()
        del converted
    else:
        theirs, state = load_folder(found.path)
    arch = {**theirs, **own, "in_channels": in_channels, "caption_channels": caption_channels,
            "text_pooling": "last" if cfg["text"]["kind"] == "clip" else "mean"}
    if cfg["text"]["max_length"] > arch["model_max_length"]:
        raise UsageError(f"text.max_length {cfg['text']['max_length']} is longer than the caption table of the "
                         f"weights in {found.path} ({arch['model_max_length']} tokens)")
    changed = {k: (theirs.get(k), v) for k, v in arch.items() if k in theirs and _differs(theirs[k], v)}
    with torch.random.fork_rng():
        model = STDiT(**{k: v for k, v in arch.items() if k in inspect.signature(STDiT.__init__).parameters})
    mine = model.state_dict()
    wrong = [f"{k} {tuple(state[k].shape)} in the weights vs {tuple(mine[k].shape)} here"
             for k in mine if k in state and state[k].shape != mine[k].shape]
    missing = [k for k in mine if k not in state]
    extra = [k for k in state if k not in mine]
    if wrong or missing or extra:
        why = "; ".join(f"{k}: {a} in the weights, {b} here" for k, (a, b) in changed.items())
        parts = ([f"shapes differ: {'; '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}"] if wrong else []) + \
                ([f"missing {', '.join(missing[:4])}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:4])}"] if extra else [])
        raise UsageError(f"--init-from {found.path} does not fit the model: {'; '.join(parts)}"
                         + (f" (config: {why})" if why else ""))
    model.load_state_dict(state)
    for key in ARCH_KEYS:
        value = model.config[key]
        cfg["model"][key] = list(value) if isinstance(value, (tuple, list)) else value
    source = ", ".join(f"{k}={v[1]}" for k, v in changed.items() if k not in ("in_channels", "caption_channels"))
    return model, (f"initialised from {found.path} (weights only; step 0, new optimizer)"
                   + (f"; the run's config sets {source}" if source else ""))


def _differs(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return list(a or []) != list(b or [])
    return a != b
