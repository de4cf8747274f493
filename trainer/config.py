"""The training config: one dataclass per section says every key, its type and its default.

A run's config is a YAML file (configs/tiny.yaml shows every key) plus `section.key=value` overrides from the
command line. Both are checked against the dataclasses before anything is built: an unknown key is an error
naming the nearest valid key, and values are converted to the declared type (`optim.lr=3e-4`, which YAML
reads as a string, is the float 0.0003). `load_config` returns plain nested dicts (a `Config`) that also
remember which keys the file or the command line set (`Config.explicit`): `--init-from` takes the model's
architecture from the weights, except for the model keys the run sets itself.

The `vae` section is `kind` plus the options of that VAE class in `trainer.encoders` (checked against its
constructor). The `diffusion` section holds the options of every objective; those of another objective than
`name` are ignored (so a config can switch objectives with one override).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import inspect
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import yaml


class ConfigError(ValueError):
    """A config mistake, in one line (a usage error: exit code 2)."""


@dataclass
class ModelConfig:
    size: str = "STDiT-S/2"  # a key of trainer.model.STDIT_SIZES; the keys below override its values
    hidden_size: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    patch_size: Optional[list[int]] = None  # (frames, height, width) per token
    mlp_ratio: Optional[float] = None
    pred_sigma: bool = False  # also predict the variance (Open-Sora 1.0, PixArt): trained by ddpm's VLB term
    class_dropout_prob: float = 0.1
    space_scale: float = 1.0
    time_scale: float = 1.0
    base_size: Optional[int] = None  # PixArt-style grid: positions span base_size (None: the grid's own size)
    init_from: Optional[str] = None  # weights to start from (see train.py --init-from)
    gradient_checkpointing: bool = False
    conditioning: str = "cross_attn"  # how the caption reaches the blocks: cross_attn | adaln | in_context


@dataclass
class VAEConfig:
    kind: str = "pixels"  # a key of trainer.encoders.VAES; other keys are that class's options


@dataclass
class TextConfig:
    kind: str = "t5"  # tiny | t5 | clip
    path: Optional[str] = "DeepFloyd/t5-v1_1-xxl"
    max_length: int = 120
    cache_mb: float = 1024.0


@dataclass
class DiffusionConfig:
    name: str = "rflow"  # rflow | ddpm
    shift: Union[float, str] = "auto"  # rflow
    base_tokens: int = 4096  # rflow
    logit_mean: float = 0.0  # rflow
    logit_std: float = 1.0  # rflow
    num_train_timesteps: int = 1000  # ddpm
    beta_schedule: str = "linear"  # ddpm


@dataclass
class DataConfig:
    path: Optional[str] = None
    buckets: list[list[int]] = field(default_factory=lambda: [[16, 256, 256]])
    frame_interval: int = 3
    batch_size: int = 4
    num_workers: int = 2
    cache: bool = False


@dataclass
class OptimConfig:
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 1000  # linear warm-up from 0, in optimizer steps
    schedule: str = "constant"  # after the warm-up: constant | linear | cosine (decay until train.max_steps)
    min_lr_ratio: float = 0.0  # linear / cosine: the lr at train.max_steps, as a fraction of lr
    grad_clip: float = 1.0  # clip the gradient norm to this (0: never); the norm is logged either way
    grad_accum: int = 1


@dataclass
class TrainConfig:
    max_steps: int = 100000
    mixed_precision: str = "bf16"  # no | bf16 | fp16
    ema_decay: float = 0.9999
    seed: int = 42
    log_every: int = 10
    spike_factor: float = 3.0  # warn when a logged loss exceeds this times the median of the last logged (0: never)
    ckpt_every: int = 1000
    keep_last: int = 3
    output_dir: str = "runs/stdit"
    sequence_parallel: int = 1  # processes sharing each sample's tokens (Ulysses); data parallel over the rest


@dataclass
class SampleConfig:
    num_frames: int = 16
    height: int = 256
    width: int = 256
    fps: float = 8.0
    steps: int = 30
    cfg_scale: float = 4.0
    cfg_channels: Optional[int] = None  # guide only the first N latent channels (None: all)


SECTIONS: dict[str, type] = {"model": ModelConfig, "vae": VAEConfig, "text": TextConfig,
                             "diffusion": DiffusionConfig, "data": DataConfig, "optim": OptimConfig,
                             "train": TrainConfig, "sample": SampleConfig}
CHOICES = {"text.kind": ("tiny", "t5", "clip"), "diffusion.name": ("rflow", "ddpm"),
           "train.mixed_precision": ("no", "bf16", "fp16"), "diffusion.beta_schedule": ("linear", "scaled_linear",
                                                                                      "squaredcos_cap_v2"),
           "optim.schedule": ("constant", "linear", "cosine"),
           "model.conditioning": ("cross_attn", "adaln", "in_context")}
POSITIVE = {"data.batch_size", "data.frame_interval", "optim.grad_accum", "train.max_steps", "train.log_every",
            "train.ckpt_every", "text.max_length", "sample.num_frames", "sample.height", "sample.width",
            "sample.fps", "sample.steps", "model.hidden_size", "model.depth", "model.num_heads",
            "model.space_scale", "model.time_scale", "model.base_size", "diffusion.base_tokens", "diffusion.num_train_timesteps",
            "train.sequence_parallel"}
NON_NEGATIVE = {"optim.lr", "optim.weight_decay", "optim.eps", "optim.warmup_steps", "optim.grad_clip",
                "data.num_workers", "train.keep_last", "text.cache_mb", "sample.cfg_scale",
                "model.class_dropout_prob", "train.ema_decay", "optim.min_lr_ratio", "train.spike_factor"}


def learning_rate(optim: dict, step: int, max_steps: int) -> float:
    """The lr of optimizer step `step` (0-based): a linear warm-up over `warmup_steps`, then `schedule` from lr
    down to `min_lr_ratio * lr` at `max_steps` (constant: lr throughout). A function of the step alone, so a
    resumed run continues the same curve."""
    lr, warmup = optim["lr"], optim["warmup_steps"]
    if step < warmup:
        return lr * (step + 1) / warmup
    if optim["schedule"] == "constant":
        return lr
    progress = min(1.0, (step - warmup + 1) / max(1, max_steps - warmup))
    left = 1 - progress if optim["schedule"] == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return lr * (optim["min_lr_ratio"] + (1 - optim["min_lr_ratio"]) * left)


class Config(dict):
    """Nested dicts of a resolved config; `explicit` holds the dotted keys the file or overrides set."""

    explicit: set


def defaults() -> dict:
    return {name: dataclasses.asdict(cls()) for name, cls in SECTIONS.items()}


def nearest(word: str, options, prefix: str = "") -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {prefix}{match[0]}?)" if match else ""


def _unknown_key(section: str, key: str) -> ConfigError:
    fields = [f.name for f in dataclasses.fields(SECTIONS[section])]
    hint = nearest(key, fields, f"{section}.")
    if not hint:
        elsewhere = [f"{s}.{key}" for s, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
        hint = f" (did you mean {elsewhere[0]}?)" if elsewhere else f"; valid keys: {', '.join(fields)}"
    return ConfigError(f"unknown config key {section}.{key}{hint}")


def _convert(value, kind, where: str):
    """`value` as the declared type `kind` (YAML strings such as '3e-4' become numbers), or ConfigError."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool) or value is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not isinstance(number, (int, float)) or number != number:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if kind is int:
            if float(number) != int(number):
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
            return int(number)
        return float(number)
    if kind is str:
        if where == "diffusion.shift" and value != "auto":
            raise ConfigError(f"{where}: expected a number or 'auto', got {value!r}")
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a text, got {value!r}")
    raise TypeError(f"unsupported config type {kind}")


def _vae_options(kind: str) -> dict | None:
    """The options (name -> default) the VAE class of `kind` takes, or None when it takes any."""
    from trainer import encoders

    registry = getattr(encoders, "VAES", {})
    if kind not in registry:
        raise ConfigError(f"unknown vae.kind {kind!r}{nearest(kind, registry)}; choose one of {sorted(registry)}")
    if registry[kind].__init__.__qualname__.split(".")[0] in ("Module", "object"):
        return {}  # no constructor of its own: no options
    params = inspect.signature(registry[kind]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n: p.default for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def validate(raw: dict, source: str = "config") -> Config:
    """Defaults updated by `raw` (nested sections), every key and value checked; returns a `Config`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config is a mapping of sections, got {type(raw).__name__}")
    cfg, explicit = Config(defaults()), set()
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown config section {section!r}{nearest(str(section), SECTIONS)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section} must be a mapping of keys, got {values!r}")
        hints = typing.get_type_hints(SECTIONS[section])
        for key, value in values.items():
            where = f"{section}.{key}"
            if section == "vae" and key != "kind":
                cfg[section][key] = value  # checked below, against the VAE class
            elif key not in hints:
                raise _unknown_key(section, key)
            else:
                if where == "train.mixed_precision" and value in (False, None):
                    value = "no"  # YAML reads a bare `no` as false
                cfg[section][key] = _convert(value, hints[key], where)
            explicit.add(where)
    for where, options in CHOICES.items():
        section, key = where.split(".")
        if cfg[section][key] not in options:
            value = cfg[section][key]
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(options)}{nearest(str(value), options)}")
    for where in POSITIVE | NON_NEGATIVE:
        section, key = where.split(".")
        value = cfg[section][key]
        if value is not None and (value <= 0 if where in POSITIVE else value < 0):
            raise ConfigError(f"{where}: must be {'> 0' if where in POSITIVE else '>= 0'}, got {value!r}")
    if cfg["optim"]["min_lr_ratio"] > 1:
        raise ConfigError(f"optim.min_lr_ratio: a fraction of optim.lr in [0, 1], got {cfg['optim']['min_lr_ratio']}")
    heads = _check_model(cfg["model"])
    sp = cfg["train"]["sequence_parallel"]
    if heads % sp:
        raise ConfigError(f"train.sequence_parallel: {sp} processes must divide model.num_heads {heads} (each takes "
                          "a share of the heads)")
    _check_vae(cfg["vae"])
    for i, b in enumerate(cfg["data"]["buckets"]):
        if len(b) != 3 or min(b) <= 0:
            raise ConfigError(f"data.buckets[{i}]: expected [frames, height, width] of positive integers, got {b}")
    if not cfg["data"]["buckets"]:
        raise ConfigError("data.buckets: give at least one [frames, height, width]")
    if cfg["text"]["kind"] != "tiny" and not cfg["text"]["path"]:
        raise ConfigError(f"text.path is required for text.kind={cfg['text']['kind']}")
    cfg.explicit = explicit
    return cfg


def _check_model(m: dict) -> None:
    from trainer.model import STDIT_SIZES

    if m["size"] not in STDIT_SIZES:
        raise ConfigError(f"model.size: unknown size {m['size']!r}{nearest(m['size'], STDIT_SIZES)}; "
                          f"choose one of {', '.join(STDIT_SIZES)}")
    if m["patch_size"] is not None and (len(m["patch_size"]) != 3 or min(m["patch_size"]) <= 0):
        raise ConfigError(f"model.patch_size: expected [frames, height, width], got {m['patch_size']}")
    hidden = m["hidden_size"] or STDIT_SIZES[m["size"]]["hidden_size"]
    heads = m["num_heads"] or STDIT_SIZES[m["size"]]["num_heads"]
    if hidden % heads or hidden % 4:
        raise ConfigError(f"model: hidden_size {hidden} must be divisible by num_heads {heads} and by 4")
    return heads


def _check_vae(v: dict) -> None:
    options = _vae_options(v["kind"])
    if options is None:
        return
    for key in v:
        if key != "kind" and key not in options:
            raise ConfigError(f"unknown config key vae.{key} for vae.kind={v['kind']}{nearest(key, options, 'vae.')}"
                              f"; valid keys: {', '.join(['kind', *options]) }")
    for key, default in options.items():
        if default is inspect.Parameter.empty and key not in v:
            raise ConfigError(f"vae.{key} is required for vae.kind={v['kind']}")


def parse_override(item: str) -> tuple[str, str, object]:
    """`optim.lr=1e-4` -> ("optim", "lr", value parsed as YAML: numbers, lists, null, true/false)."""
    key, sep, value = item.partition("=")
    if not sep or key.count(".") != 1 or not all(key.split(".")):
        raise ConfigError(f"bad override {item!r}: expected section.key=value (e.g. optim.lr=3e-4)")
    section, leaf = key.split(".")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"bad override {item!r}: the value is not valid YAML") from None
    return section, leaf, parsed


def read_yaml(path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not a YAML file ({str(e).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: a config is a mapping of sections")
    return loaded


def load_config(path: str | Path | None, overrides: list[str] = (), extra: dict | None = None) -> Config:
    """Defaults <- the YAML file <- `section.key=value` overrides <- `extra` ({"data.path": value}: command-line
    flags, not parsed as YAML), checked (ConfigError on any mistake)."""
    raw = copy.deepcopy(read_yaml(path)) if path is not None else {}
    items = [parse_override(item) for item in overrides]
    items += [(*key.split("."), value) for key, value in (extra or {}).items()]
    for section, leaf, value in items:
        if not isinstance(raw.get(section), dict):
            raw[section] = {}
        raw[section][leaf] = value
    return validate(raw, str(path) if path is not None else "config")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help of the trainer's commands: each option's default, unless it has none or its help names it."""

    def _get_help_string(self, action):
        d = action.default
        if "(default" in (action.help or "") or d is None or d is False or d == [] or d is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def dump(cfg: dict) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False)
