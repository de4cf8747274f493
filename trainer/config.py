"""The training config: one YAML file (see configs/tiny.yaml for every key), `section.key=value` overrides."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

DEFAULTS: dict = {
    "model": {"size": "STDiT-S/2", "class_dropout_prob": 0.1, "space_scale": 1.0, "time_scale": 1.0,
              "gradient_checkpointing": False},
    "vae": {"kind": "pixels"},
    "text": {"kind": "t5", "path": "DeepFloyd/t5-v1_1-xxl", "max_length": 120, "cache_mb": 1024},
    "diffusion": {"name": "rflow"},
    "data": {"path": None, "buckets": [[16, 256, 256]], "frame_interval": 3, "batch_size": 4, "num_workers": 2,
             "cache": False},
    "optim": {"lr": 2e-5, "weight_decay": 0.0, "betas": [0.9, 0.999], "warmup_steps": 1000, "grad_clip": 1.0,
              "grad_accum": 1},
    "train": {"max_steps": 100000, "mixed_precision": "bf16", "ema_decay": 0.9999, "seed": 42, "log_every": 10,
              "ckpt_every": 1000, "keep_last": 3, "output_dir": "runs/stdit"},
    "sample": {"num_frames": 16, "height": 256, "width": 256, "fps": 8, "steps": 30, "cfg_scale": 4.0},
}


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_override(cfg: dict, item: str) -> None:
    """`optim.lr=1e-4` (the value is parsed as YAML: numbers, lists, null, true/false)."""
    key, sep, value = item.partition("=")
    if not sep or "." not in key:
        raise ValueError(f"bad override {item!r}: expected section.key=value")
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"bad override {item!r}: {p} is not a section")
    node[leaf] = yaml.safe_load(value)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"{p}: no such config file")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{p}: a config is a mapping of sections")
        unknown = set(loaded) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"{p}: unknown config sections {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        cfg = merge(cfg, loaded)
    for item in overrides:
        apply_override(cfg, item)
    if cfg["train"].get("mixed_precision") in (False, None):  # YAML reads a bare `no` as false
        cfg["train"]["mixed_precision"] = "no"
    return cfg
