"""Train an STDiT with Accelerate.

    accelerate launch trainer/train.py --config trainer/configs/tiny.yaml --data SHARDS_OR_MANIFEST \
        [--max-steps N] [--output-dir DIR] [--resume latest|DIR] [section.key=value ...]

Checkpoints are OUTPUT_DIR/checkpoints/<optimizer step>/: the Accelerate state (model, optimizer, RNG)
plus the EMA (safetensors) and data position (JSON) for `--resume`, plus `model/`, `ema/`, `config.yaml` (and a tiny `text_encoder/`) for `sample`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import time
from collections import OrderedDict
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

if __package__ in (None, ""):  # run as a script (accelerate launch trainer/train.py) without an install
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.files import atomic_write_text
from trainer.config import load_config
from trainer.data import BucketSampler, collate, open_dataset
from trainer.diffusion import build_diffusion
from trainer.encoders import TextEncoder, build_text_encoder, build_vae
from trainer.model import STDiT, build_stdit


class TrainState:
    """Optimizer step and data position, saved with every checkpoint."""

    def __init__(self):
        self.step, self.epoch, self.position = 0, 0, 0

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch, self.position = int(state["step"]), int(state["epoch"]), int(state["position"])


def build_model(cfg: dict, in_channels: int, caption_channels: int) -> STDiT:
    m = dict(cfg["model"])
    size = m.pop("size", None)
    m.pop("gradient_checkpointing", None)
    return build_stdit(size, in_channels=in_channels, caption_channels=caption_channels,
                       model_max_length=cfg["text"]["max_length"], **m)


def save_resume_state(ckpt: Path, ema, state: TrainState) -> None:
    """EMA weights as safetensors and the step/data position as JSON: a resume loads no pickle."""
    ema_state = ema.state_dict()
    shadow = ema_state.pop("shadow_params")
    save_file({f"shadow.{i:05d}": p.detach().cpu().contiguous() for i, p in enumerate(shadow)},
              str(ckpt / "ema_state.safetensors"))
    (ckpt / "resume_state.json").write_text(json.dumps({"ema": ema_state, "train": state.state_dict()}))


def load_resume_state(ckpt: Path, ema, state: TrainState) -> None:
    meta = json.loads((ckpt / "resume_state.json").read_text())
    tensors = load_file(str(ckpt / "ema_state.safetensors"))
    ema.load_state_dict({**meta["ema"], "shadow_params": [tensors[k] for k in sorted(tensors)]})
    state.load_state_dict(meta["train"])


def checkpoints(out_dir: Path) -> list[Path]:
    root = out_dir / "checkpoints"
    found = [p for p in root.glob("*") if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name))


def save_checkpoint(accelerator, out_dir: Path, step: int, model, ema, state, cfg: dict, text_path,
                    keep_last: int):
    root = out_dir / "checkpoints"
    tmp, final = root / f".tmp-{step}", root / str(step)
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model, optimizer, and every process's RNG state
    if accelerator.is_main_process:
        save_resume_state(tmp, ema, state)
        accelerator.unwrap_model(model).save_pretrained(tmp / "model")
        with torch.random.fork_rng():  # building a model draws random init: keep the training stream intact
            ema_model = STDiT.from_config(accelerator.unwrap_model(model).config)
        ema.copy_to(ema_model.parameters())  # the fp32 EMA weights, loadable by `sample` alone
        ema_model.save_pretrained(tmp / "ema")
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train an STDiT on shards or a captioned manifest.")
    p.add_argument("--config", required=True, help="YAML config (see trainer/configs/tiny.yaml)")
    p.add_argument("--data", help="shards folder or manifest (overrides data.path)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides train.max_steps)")
    p.add_argument("--output-dir", help="run folder (overrides train.output_dir)")
    p.add_argument("--resume", help="'latest' or a checkpoint folder")
    p.add_argument("--kill-at-step", type=int, help=argparse.SUPPRESS)  # fault injection for resume tests
    p.add_argument("overrides", nargs="*", help="section.key=value")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    for key, val in (("data", args.data), ("max_steps", args.max_steps), ("output_dir", args.output_dir)):
        if val is not None:
            cfg["data" if key == "data" else "train"]["path" if key == "data" else key] = val
    tc, oc, dc = cfg["train"], cfg["optim"], cfg["data"]
    if not dc.get("path"):
        raise SystemExit("error: no training data: pass --data SHARDS_DIR_OR_MANIFEST")
    out_dir = Path(tc["output_dir"])
    # several processes without GPUs (torchrun on CPU): Accelerate needs cpu=True to pick gloo
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=tc["mixed_precision"], gradient_accumulation_steps=oc["grad_accum"],
                              log_with="tensorboard", project_dir=str(out_dir), cpu=multi_cpu)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes

    # encoders (frozen), data, model
    text_path, text_kind = build_text_encoder(cfg["text"], out_dir, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    text = TextEncoder(str(text_path), text_kind, cfg["text"]["max_length"]).to(device)
    vae_cfg = dict(cfg["vae"])
    vae = build_vae(vae_cfg.pop("kind"), **vae_cfg).to(device)
    dataset = open_dataset(dc["path"], dc["frame_interval"], seed=tc["seed"], cache=dc.get("cache", False))
    sampler = BucketSampler(dataset.shapes(), dc["buckets"], dc["batch_size"], rank, world, seed=tc["seed"])
    set_seed(tc["seed"])  # same init on every process
    model = build_model(cfg, vae.channels, text.channels)
    if cfg["model"].get("gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    ema = EMAModel(model.parameters(), decay=tc["ema_decay"], model_cls=STDiT, model_config=model.config)
    ema.to(device)
    diffusion_cfg = dict(cfg["diffusion"])
    diffusion = build_diffusion(diffusion_cfg.pop("name"), **diffusion_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=oc["lr"], betas=tuple(oc["betas"]),
                            weight_decay=oc["weight_decay"])
    model, opt = accelerator.prepare(model, opt)
    state = TrainState()
    if args.resume:
        found = checkpoints(out_dir) if args.resume == "latest" else [Path(args.resume)]
        if args.resume != "latest" and not (found[0] / "config.yaml").is_file():
            raise SystemExit(f"error: {args.resume} is not a checkpoint folder (--resume latest or RUN/checkpoints/N)")
        if found:
            accelerator.load_state(str(found[-1]))  # tensors only (weights_only=True)
            load_resume_state(found[-1], ema, state)
            ema.to(device)
            accelerator.print(f"resumed from {found[-1]} at step {state.step}")
        else:
            accelerator.print(f"no checkpoint in {out_dir / 'checkpoints'}: starting from scratch")
    beyond = [c.name for c in checkpoints(out_dir) if int(c.name) > state.step]
    if beyond:  # another run's later checkpoints: its `--resume latest` and keep-last pruning would mix runs
        raise SystemExit(f"error: {out_dir / 'checkpoints'} holds checkpoints past step {state.step} "
                         f"({', '.join(beyond)}): continue with --resume latest, or branch into a new --output-dir")
    metrics_path = out_dir / "metrics.jsonl"
    if args.resume and found and accelerator.is_main_process and metrics_path.exists():
        kept = [ln for ln in metrics_path.read_text().splitlines()  # steps after the checkpoint are run again
                if ln.strip() and json.loads(ln)["step"] <= state.step]
        atomic_write_text(metrics_path, "".join(ln + "\n" for ln in kept))
    if not args.resume or not found:
        torch.manual_seed(tc["seed"] * 1000 + rank)  # per-process noise stream
    accelerator.init_trackers("train")
    n_params = sum(p.numel() for p in model.parameters())
    accelerator.print(f"STDiT {n_params / 1e6:.2f}M params, {len(dataset)} clips, "
                      f"{len(sampler)} batches/epoch/process, {world} process(es)")

    # encoder outputs of recent captions (least recently used first out), within text.cache_mb: a T5-XXL
    # output is 1.9 MB, so caching every caption of a large dataset would fill the host's memory
    caption_cache: OrderedDict[str, tuple] = OrderedDict()
    cache_budget = float(cfg["text"].get("cache_mb", 1024)) * 2**20

    def encode_text(captions):
        missing = [c for c in dict.fromkeys(captions) if c not in caption_cache]
        fresh = {}
        if missing:
            y, m = text(missing)
            fresh = {c: (y[i].cpu(), m[i].cpu()) for i, c in enumerate(missing)}
        ys, ms = zip(*(fresh[c] if c in fresh else caption_cache[c] for c in captions))
        for c in dict.fromkeys(captions):
            caption_cache[c] = fresh.get(c) or caption_cache[c]
            caption_cache.move_to_end(c)
        entry = ys[0].numel() * ys[0].element_size() + ms[0].numel() * ms[0].element_size()
        while caption_cache and len(caption_cache) * entry > cache_budget:
            caption_cache.popitem(last=False)
        return torch.stack(ys).to(device), torch.stack(ms).to(device)

    bar = tqdm(total=tc["max_steps"], initial=state.step, disable=not accelerator.is_main_process, desc="train")
    t_log, seen, losses, last = time.perf_counter(), 0, [], None
    loader_gen = torch.Generator().manual_seed(tc["seed"])
    model.train()
    while state.step < tc["max_steps"]:
        sampler.set_epoch(state.epoch, state.position)
        dataset.epoch = state.epoch  # a new random frame window per epoch (deterministic, so resume is exact)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                             num_workers=dc["num_workers"], generator=loader_gen)
        for batch in loader:
            for clip_id, reason in dataset.note_failures(batch).items():  # read in a loader worker or here
                print(f"[rank {rank}] skipping clip {clip_id}: {reason}", flush=True)
            empty = not batch["clip_id"]  # every clip of the batch failed (trainer.data: never replaced)
            if world > 1:  # all processes skip together: a lone skip would pair DDP's gradient all-reduces wrongly
                empty = bool(accelerator.gather(torch.tensor([int(empty)], device=device)).any())
            if empty:
                state.position += 1
                continue
            with accelerator.accumulate(model):
                if "latents" in batch:  # pre-extracted features (trainer.extract)
                    x0, y, mask = batch["latents"].to(device), batch["y"].to(device), batch["mask"].to(device)
                else:
                    x0 = vae.encode(batch["video"].to(device))  # (B, C, T, H, W)
                    y, mask = encode_text(batch["caption"])  # (B, L, C_text), (B, L)
                loss = diffusion.loss(model, x0, y, mask)
                accelerator.backward(loss)
                if accelerator.sync_gradients and oc["grad_clip"]:
                    accelerator.clip_grad_norm_(model.parameters(), oc["grad_clip"])
                for g in opt.param_groups:  # linear warmup, then constant
                    g["lr"] = oc["lr"] * min(1.0, (state.step + 1) / max(1, oc["warmup_steps"]))
                opt.step()
                opt.zero_grad(set_to_none=True)
            state.position += 1
            seen += len(x0) * world
            losses.append(loss.detach())
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            ema.step(accelerator.unwrap_model(model).parameters())
            bar.update(1)
            if state.step % tc["log_every"] == 0 or state.step == tc["max_steps"]:
                last = accelerator.gather(torch.stack(losses).mean()[None]).mean().item()
                rate = seen / (time.perf_counter() - t_log)
                failed = int(accelerator.gather(torch.tensor([len(dataset.failures)], device=device)).sum())
                metrics = {"step": state.step, "loss": last, "samples_per_s": rate, "lr": opt.param_groups[0]["lr"],
                           "failed_clips": failed}
                accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=state.step)
                if accelerator.is_main_process:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(metrics) + "\n")
                bar.set_postfix(loss=f"{last:.4f}", samples_s=f"{rate:.1f}")
                t_log, seen, losses = time.perf_counter(), 0, []
            if state.step % tc["ckpt_every"] == 0 or state.step == tc["max_steps"]:
                save_checkpoint(accelerator, out_dir, state.step, model, ema, state, cfg, text_path, tc["keep_last"])
            if args.kill_at_step is not None and state.step == args.kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
            if state.step >= tc["max_steps"]:
                break
        else:
            state.epoch, state.position = state.epoch + 1, 0
    bar.close()
    accelerator.end_training()
    final = checkpoints(out_dir)
    accelerator.print(f"done: {state.step} steps, last logged loss "
                      f"{'n/a' if last is None or math.isnan(last) else f'{last:.4f}'}, "
                      f"checkpoint {final[-1] if final else 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
