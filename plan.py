"""`plan`: what a dataset and a training config will cost, before anyone rents a GPU.

    plan --config CONFIG [--data SHARDS_OR_MANIFEST] [--gpus N] [--gpu H100] [--steps S | --epochs E]
         [--tokens-per-s X | --mfu M] [--caption-model qwen-vl ...] [--card] [--json] [section.key=value ...]

Every number comes from the room that owns it: tokens per sample, parameters, FLOPs and memory from the trainer
(trainer/estimate.py, trainer/memory.py), visual and text tokens per clip from the captioner
(captioner/estimate.py); this module only reads the data and puts them together, so it alone imports both.
`--card` writes the Compute section of SHARDS/DATA_CARD.md (build-shards writes the rest of the card).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from captioner.estimate import CaptionCost
from index import storage
from captioner.models import ModelError
from captioner.prompts import PromptError
from trainer import estimate
from trainer.config import ConfigError, load_config
from trainer.memory import GPUS, USABLE, GiB, memory, smallest_gpu

SHIPPED = Path(estimate.__file__).resolve().parent / "configs"
OPENSORA = [SHIPPED / "opensora-v1" / f"stage{i}.yaml" for i in (1, 2, 3)]
DEFAULT_MFU = 0.12  # Open-Sora 1.0's published 28k tokens/s/GPU for STDiT-XL/2 at 16x256x256 on H800 is 0.12
CARD_START, CARD_END = "<!-- plan: compute -->", "<!-- /plan: compute -->"


class PlanError(ValueError):
    """A dataset or option the plan cannot use, in one line (exit code 2)."""


def hours(rows: pd.DataFrame) -> float:
    """Hours of the clips from their PTS range (num_frames / fps is off for variable-frame-rate sources)."""
    if not {"start_sec", "end_sec"} <= set(rows) or not len(rows):
        return 0.0
    return float((rows["end_sec"].astype(float) - rows["start_sec"].astype(float)).clip(lower=0).round(6).sum() / 3600)


def _parquet(loc) -> pd.DataFrame:
    with storage.open_read(loc) as f:
        return pd.read_parquet(f)


def read_data(path) -> tuple[pd.DataFrame, dict, str]:
    """(the clips' rows, {(frames, height, width): clips} as the trainer would train on them, a note)."""
    from index.manifest import ManifestError, read_manifest
    from trainer.data import FeatureDataset, open_dataset

    p = storage.location(path)
    try:
        names = storage.listing(p) if storage.is_dir(p) else None
        if names is not None and "features.json" in names:
            ds = FeatureDataset(p)
            shapes = pd.Series(ds.shapes()).value_counts().to_dict()
            return _parquet(p / "index.parquet"), shapes, "pre-extracted features: captioning not planned"
        if names is not None and "index.parquet" not in names and "_manifest.json" not in names:
            raise PlanError(f"--data {p}: a folder without index.parquet (not a build-shards output)")
        if names is None and not storage.exists(p):
            raise PlanError(f"--data {p}: no such file or folder")
        rows = _parquet(p / "index.parquet") if names and "index.parquet" in names else read_manifest(p)
    except (OSError, ValueError, ManifestError) as e:  # an unreadable index, manifest or features folder
        raise PlanError(f"--data {p}: {' '.join(str(e).split())[:200]}") from None
    missing = [c for c in ("num_frames", "width", "height") if c not in rows]
    if missing:
        raise PlanError(f"--data {p}: no {', '.join(missing)} column (a clips manifest or build-shards output)")
    try:
        trained, note = open_dataset(p).rows, ""
    except ValueError as e:  # not captioned yet, or an export for another trainer: plan every clip
        trained, note = rows, f"the trainer cannot read it as it is ({e}); planned for every clip"
    shapes = trained[["num_frames", "height", "width"]].astype(int).value_counts().to_dict()
    return rows, shapes, note


def plan_config(path, overrides, shapes, a, with_memory: bool = True) -> dict:
    """The training side of the plan for one config: buckets, model, run and memory."""
    cfg = load_config(path, overrides)
    parts = estimate.Parts(cfg)
    try:
        rp = estimate.RunPlan(cfg, parts.vae, parts.model, a.gpus, shapes)
    except ValueError as e:
        raise PlanError(f"{path}: {e}") from None
    if a.epochs is not None and rp.epoch_steps is None:
        raise PlanError("--epochs needs --data (an epoch is the dataset's clips)")
    steps = math.ceil(a.epochs * rp.epoch_steps) if a.epochs is not None else a.steps or rp.steps
    samples = steps * rp.samples_per_step
    tokens, flops, peak = samples * rp.tokens_per_sample, samples * rp.flops_per_sample, GPUS[a.gpu]["tflops"] * 1e12
    if a.tokens_per_s:
        seconds, rate = tokens / (a.tokens_per_s * a.gpus), f"{a.tokens_per_s:,.0f} tokens/s/GPU (given)"
    else:
        mfu = a.mfu or DEFAULT_MFU
        seconds = flops / (mfu * peak * a.gpus)
        rate = f"MFU {mfu:.0%} of {a.gpu}'s {GPUS[a.gpu]['tflops']:g} TFLOPS" + ("" if a.mfu else " (assumed)")
    gpu_s = seconds * a.gpus
    run = {"gpus": a.gpus, "gpu": a.gpu, "batch_size": rp.batch_size, "steps": steps,
           "samples_per_step": rp.samples_per_step, "epoch_steps": rp.epoch_steps,
           "epochs": steps / rp.epoch_steps if rp.epoch_steps else None, "tokens": tokens, "model_flops": flops,
           "rate": rate, "tokens_per_s_per_gpu": tokens / gpu_s, "samples_per_s_per_gpu": samples / gpu_s,
           "mfu": flops / gpu_s / peak, "hours": seconds / 3600, "gpu_hours": gpu_s / 3600}
    out = {"config": str(path), "params": parts.params() if with_memory else None, "buckets": rp.buckets, "run": run}
    if with_memory:
        big = max(range(len(rp.buckets)), key=lambda i: rp.buckets[i]["tokens"])
        out["memory"] = {"bucket": rp.buckets[big]["bucket"], "checkpointing": cfg["model"]["gradient_checkpointing"],
                         "features": a.features}
        for s in ["ddp"] + (["fsdp"] if a.gpus > 1 else []):
            m = out["memory"][s] = memory(parts, rp.buckets[big]["bucket"], a.gpus, s, a.features)
            m["fits"], m["fits_gpu"] = smallest_gpu(m["total"]), m["total"] <= USABLE * GPUS[a.gpu]["gb"] * GiB
    return out


def plan_captions(rows: pd.DataFrame, a) -> dict:
    """The captioning side: tokens per clip for the chosen model and frame sampling, totals, GPU-hours."""
    cost = CaptionCost(a.caption_model, a.prompt, a.num_frames, a.sample_fps, a.max_frames, a.max_pixels,
                       a.max_new_tokens)
    return cost.dataset(rows, a.caption_tokens_per_s)


def human(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / 2**20:.1f} MiB"


def num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def span(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{num(seconds / size)} {unit}"
    return f"{seconds:.3g} s"


def summary(p: dict) -> str:
    r = p["run"]
    mem = p.get("memory", {}).get("ddp")
    fit = "" if not mem else f"; {human(mem['total'])}/GPU ({mem['fits'] or 'fits no listed GPU'})"
    return (f"{Path(p['config']).name}: {r['steps']:,} steps x {r['samples_per_step']} samples = {r['tokens']:.3g} "
            f"tokens, {r['model_flops']:.3g} FLOPs; {num(r['gpu_hours'])} GPU-hours ({span(r['hours'] * 3600)} on "
            f"{r['gpus']} x {r['gpu']}) at {r['rate']}{fit}")


def show(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 150)

    def table(title, header, rows):
        t = Table(title=title, title_justify="left")
        for h in header:
            t.add_column(h, justify="left" if h == header[0] else "right")
        for row in rows:
            t.add_row(*(str(c) for c in row))
        con.print(t)

    g = lambda x: "{}e{}".format(*f"{x:.2e}".split("e")[:1], int(f"{x:.2e}".split("e")[1]))  # noqa: E731
    d = result.get("data")
    if d:
        con.print(f"data: {d['path']}: {d['clips']:,} clips, {d['hours']:.3f} h of video" + (
            f" ({d['note']})" if d["note"] else ""))
    for p in result["configs"]:
        if p["params"] is None:  # planned for the data card only
            con.print("plan: " + summary(p))
            continue
        data = any("clips" in b for b in p["buckets"])
        table(f"{p['config']}: FLOPs per sample", ["bucket (TxHxW)", "latent (CxTxHxW)", "tokens/sample",
              "forward", "spatial attn", "temporal attn", "full 3D attn instead", "fwd+bwd"]
              + (["clips", "tokens in the dataset"] if data else []),
              [["x".join(map(str, b["bucket"])), "x".join(map(str, b["latent"])), f"{b['tokens']:,}", g(b["forward"]),
                g(b["forward_flops"]["spatial_attention"]), g(b["forward_flops"]["temporal_attention"]),
                g(b["forward_flops"]["full_attention"]), g(b["model"])]
               + ([f"{b['clips']:,}", f"{b['dataset_tokens']:,}"] if data else []) for b in p["buckets"]])
        if p["params"]:
            con.print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in p["params"].items())
                      + " (only the STDiT is trained)")
        if "memory" in p:
            m, names = p["memory"], [s for s in ("ddp", "fsdp") if s in p["memory"]]
            labels = list(dict.fromkeys(k for s in names for k in m[s]["parts"]))
            rows = [[k] + [human(m[s]["parts"][k]) if k in m[s]["parts"] else "-" for s in names] for k in labels]
            rows += [[f"activations, {k}"] + [human(m[s]["activations"][k]) for s in names]
                     for k in ("checkpointed", "full")]
            rows += [["total (as configured)"] + [human(m[s]["total"]) for s in names],
                     ["smallest GPU it fits"] + [m[s]["fits"] or "none listed" for s in names]]
            table(f"memory per GPU (bucket {'x'.join(map(str, m['bucket']))}, gradient checkpointing "
                  f"{'on' if m['checkpointing'] else 'off'})", ["", *[s.upper() for s in names]], rows)
            if not any(m[s]["fits_gpu"] for s in names):
                gpu = p["run"]["gpu"]
                con.print(f"[bold red]warning: does not fit {USABLE:.0%} of an {gpu}'s {GPUS[gpu]['gb']} GB[/] "
                          f"(smallest that fits: {m[names[-1]]['fits'] or 'none listed'}): lower data.batch_size "
                          "(raise optim.grad_accum), vae.micro_batch, use FSDP, gradient checkpointing or --features")
        con.print("plan: " + summary(p))
    c = result.get("captioning")
    if c:
        per = [f"{c['frames_per_clip']:.1f}"] + [f"{c[k + '_tokens_per_clip']:,.0f}" for k in ("visual", "text",
                                                                                            "output")]
        table(f"captioning with {c['model']} ({c['counted_with']})",
              ["per clip", "frames", "visual tokens", "text tokens", "output tokens"], [["mean", *per]])
        hours = f"{num(c['gpu_hours'])} GPU-hours at {c['rate']}" if c["rate"] else "GPU-hours: --caption-tokens-per-s"
        con.print(f"captioning: {c['clips']:,} clips, {c['input_tokens']:.3g} input and {c['output_tokens']:.3g} "
                  f"output tokens ({c['output_from']}); {hours}")


def card_section(result: dict) -> str:
    head = "| config | bucket | clips | tokens/sample | tokens in the dataset | FLOPs/epoch (fwd+bwd) |"
    lines = [CARD_START, "## Compute", "", "What training on these clips costs, from `plan` (one sample per clip per "
             f"epoch; {result['assumption']}).", "", head, "|---" * 6 + "|"]
    for p in result["configs"]:
        batch = p["run"]["batch_size"]  # a bucket's last batch is topped up
        for b in p["buckets"]:
            epoch = -(-b["clips"] // batch) * batch * b["model"]
            lines.append(f"| {Path(p['config']).name} | {'x'.join(map(str, b['bucket']))} | {b['clips']:,} | "
                         f"{b['tokens']:,} | {b['dataset_tokens']:,} | {epoch:.3g} |")
    lines += ["", "| config | steps/epoch | FLOPs/epoch | GPU-hours/epoch |", "|---" * 4 + "|"]
    for p in result["configs"]:
        r = p["run"]
        lines.append(f"| {Path(p['config']).name} | {r['epoch_steps']:,.1f} | {r['model_flops'] / r['epochs']:.3g} | "
                     f"{num(r['gpu_hours'] / r['epochs'])} |")
    return "\n".join(lines + ["", CARD_END])


def write_card(folder, section: str):
    card = storage.location(folder) / "DATA_CARD.md"
    text = storage.read_text(card)
    if CARD_START in text and CARD_END in text:
        head, rest = text.split(CARD_START, 1)
        text = head + section + rest.split(CARD_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    return storage.write_text(card, text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plan", description=__doc__.split("\n\n")[0].replace("`", ""),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", action="append", help="training config (repeat for several; default with --card: "
                   "the Open-Sora 1.0 stages)")
    p.add_argument("--data", help="shards folder, clips manifest or trainer.extract features (default: the config's "
                   "own buckets)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs training together")
    p.add_argument("--gpu", default="H100", help=f"one of {', '.join(GPUS)}")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int, help="optimizer steps (default: train.max_steps)")
    steps.add_argument("--epochs", type=float, help="epochs of --data instead of steps")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--tokens-per-s", type=float, help="measured training tokens/s per GPU (bench/train_speed.py)")
    rate.add_argument("--mfu", type=float, help=f"model FLOPs utilisation of --gpu's peak (default {DEFAULT_MFU})")
    p.add_argument("--features", action="store_true", help="training reads pre-extracted features: no VAE or "
                   "text encoder on the GPU")
    p.add_argument("--caption-model", default="qwen-vl", help="captioning model (caption-videos --model)")
    p.add_argument("--prompt", default="detailed", help="caption prompt id")
    p.add_argument("--num-frames", type=int, default=8, help="frames per clip (caption-videos' option)")
    p.add_argument("--sample-fps", type=float, help="sample frames at this rate instead")
    p.add_argument("--max-frames", type=int, default=32, help="cap on frames with --sample-fps")
    p.add_argument("--max-pixels", type=int, help="pixels per frame cap (Qwen default: 360*420)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest caption, in tokens")
    p.add_argument("--caption-tokens-per-s", type=float, help="measured captioning output tokens/s per GPU "
                   "(caption-videos' summary, bench/captioner.py)")
    p.add_argument("--card", action="store_true", help="write the Compute section of DATA_CARD.md in --data")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of tables")
    p.add_argument("overrides", nargs="*", help="config overrides: section.key=value (e.g. data.batch_size=4)")
    return p


def check(a) -> None:
    a.gpu = next((g for g in GPUS if g.lower() == a.gpu.lower()), a.gpu)
    if a.gpu not in GPUS:
        raise PlanError(f"--gpu {a.gpu}: not one of {', '.join(GPUS)}")
    for name in ("gpus", "steps", "epochs", "tokens_per_s", "caption_tokens_per_s", "num_frames", "max_new_tokens"):
        v = getattr(a, name)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise PlanError(f"--{name.replace('_', '-')} must be a positive number, got {v}")
    if a.mfu is not None and not 0 < a.mfu <= 1:
        raise PlanError(f"--mfu must be in (0, 1], got {a.mfu}")
    if a.data:
        storage.check_store(a.data, "--data")
    if a.card and not a.data:
        raise PlanError("--card writes the Compute section of --data's DATA_CARD.md: give --data SHARDS_DIR")
    if a.card and not storage.is_file(storage.location(a.data) / "DATA_CARD.md"):
        raise PlanError(f"--card: no DATA_CARD.md in {a.data} (run build-shards first)")
    if not a.config and not a.card:
        raise PlanError("give --config CONFIG (trainer/configs/*.yaml)")


def main(argv=None) -> int:
    a = build_parser().parse_intermixed_args(argv)
    try:
        check(a)
        result, shapes = {"configs": []}, None
        if a.data:
            rows, shapes, note = read_data(a.data)
            result["data"] = {"path": a.data, "clips": len(rows), "note": note, "hours": hours(rows)}
        configs = [(c, a.overrides, True) for c in a.config or []]
        configs += [(c, [], False) for c in (OPENSORA if a.card else [])]
        result["configs"] = [plan_config(c, o, shapes, a, m) for c, o, m in configs]
        result["summary"] = [summary(p) for p in result["configs"]]
        result["assumption"] = result["configs"][0]["run"]["rate"] + f" on {a.gpus} x {a.gpu}"
        if a.data and result["data"]["clips"] and not note.startswith("pre-extracted"):
            result["captioning"] = plan_captions(rows, a)
        if a.card:
            write_card(a.data, card_section(result))
    except (ConfigError, PlanError, ModelError, PromptError, estimate.EstimateError, storage.StorageError) as e:
        print(f"plan: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(result, indent=1, default=float))
    else:
        show(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
