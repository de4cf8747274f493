"""Train an STDiT with Accelerate.

    python -m trainer.train --config CONFIG.yaml --data SHARDS_OR_MANIFEST [--output-dir RUN] [--max-steps N]
        [--init-from WEIGHTS] [--resume latest|CHECKPOINT] [--accelerate-config FILE] [section.key=value ...]
    accelerate launch --config_file FILE trainer/train.py --config CONFIG.yaml ...   (the same arguments)

Everything a user can get wrong (the config's keys and types, --data, --output-dir, --init-from, --resume, a
missing model, another run holding RUN) is checked before any model is built: one line, exit code 2. With
`--accelerate-config` or `--num-processes` this command checks, then starts the processes itself (Accelerate's
launcher; torchrun with gloo for several CPU processes), so a mistake found by a training process is its one
line and exit code too (`accelerate launch` turns any failed process into a traceback and exit code of its
own). Ctrl-C: one line saying which checkpoint is kept, exit code 130.

Checkpoints are RUN/checkpoints/<optimizer step>/ (see trainer/checkpoints.py). `--resume latest` continues a run
with its optimizer, EMA and data position; `--init-from` starts a new run from weights only (a
`python -m trainer.convert` folder, a shotcap checkpoint or run folder, or an Open-Sora 1.0 / PixArt-alpha file
converted on the fly). With both, a checkpoint of the run wins: the same command plus `--resume latest`
continues an interrupted fine-tune.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script (accelerate launch trainer/train.py) without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.engine import ctrl_c_guard, ignore_ctrl_c  # noqa: E402
from index.files import LockError, OutputLock, atomic_write_text, command_line  # noqa: E402
from trainer.checkpoints import (EMA, SpikeWatch, TrainState, UsageError, build_model, checkpoints,  # noqa: E402
                                 init_model, load_resume_state, logged_losses, save_checkpoint, trim_metrics)
from trainer.config import ConfigError, HelpFormatter, dump, learning_rate, load_config  # noqa: E402
from trainer.encoders import build_text_encoder  # noqa: E402
from trainer.launch import launch, preflight  # noqa: E402

def sample_generators(seed: int, step: int, micro: int, clip_ids) -> list[torch.Generator]:
    """One generator per sample, from (seed, step, micro-batch, clip): the noise, timestep and caption dropout
    of a clip do not depend on the process that trains it, so N processes train what one process would."""
    seen: dict[str, int] = {}
    out = []
    for cid in clip_ids:
        k = seen[cid] = seen.get(cid, -1) + 1  # a clip repeated in the batch gets other noise
        digest = hashlib.blake2b(f"{seed}/{step}/{micro}/{cid}/{k}".encode(), digest_size=8).digest()
        out.append(torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train", description="Train an STDiT on shards or a captioned manifest.",
                                formatter_class=HelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (trainer/configs/tiny.yaml shows every key)")
    p.add_argument("--data", help="shards folder, manifest or features (default: the config's data.path)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (default: train.max_steps)")
    p.add_argument("--output-dir", help="run folder (default: train.output_dir)")
    p.add_argument("--init-from", help="start from these weights, step 0 (default: model.init_from)")
    p.add_argument("--resume", help="'latest' or a checkpoint folder: continue that run")
    p.add_argument("--accelerate-config", help="check, then start the processes with this Accelerate config "
                   "(trainer/configs/accelerate/*.yaml)")
    p.add_argument("--num-processes", type=int, help="processes to start (with or without --accelerate-config)")
    p.add_argument("--kill-at-step", type=int, help=argparse.SUPPRESS)  # fault injection for resume tests
    p.add_argument("--interrupt-at-step", type=int, help=argparse.SUPPRESS)  # a real SIGINT, for the Ctrl-C tests
    p.add_argument("overrides", nargs="*", help="config overrides: section.key=value (e.g. optim.lr=3e-4)")
    return p


def resolve_config(args):
    flags = {"data.path": args.data, "train.max_steps": args.max_steps, "train.output_dir": args.output_dir,
             "model.init_from": args.init_from}
    return load_config(args.config, args.overrides, extra={k: v for k, v in flags.items() if v is not None})


def main(argv=None) -> int:
    run = {"out_dir": None, "step": None}  # for the Ctrl-C message
    is_main = int(os.environ.get("RANK", "0")) == 0
    with ctrl_c_guard(argv):
        try:
            return train(argv, run)
        except (UsageError, ConfigError, LockError) as e:
            if is_main:
                print(f"train: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            ignore_ctrl_c()  # a second one must not break the exit with a traceback
            previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a launcher's follow-up SIGTERM must not cut it
            if is_main:
                print(f"train: {interrupted_message(run)}", file=sys.stderr)
            signal.signal(signal.SIGTERM, previous)
            return 130


def interrupted_message(run: dict) -> str:
    if run["step"] is None:
        return "interrupted before training started; nothing to resume"
    kept = checkpoints(run["out_dir"])
    if not kept:
        return (f"interrupted at step {run['step']}, before the first checkpoint: nothing kept; run the same "
                "command again to start over")
    return (f"interrupted at step {run['step']}: kept checkpoint {kept[-1]}; continue with the same command "
            "and --resume latest")


def train(argv, run: dict) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_intermixed_args(argv)  # overrides may come before and after options
    cfg = resolve_config(args)
    if args.num_processes is not None and args.num_processes < 1:
        raise UsageError("--num-processes must be >= 1")
    sp, processes = cfg["train"]["sequence_parallel"], args.num_processes or int(os.environ.get("WORLD_SIZE", "1"))
    if processes % sp:  # (its heads are checked with the config)
        raise UsageError(f"train.sequence_parallel: {sp} must divide the number of processes ({processes}); the "
                         "processes left over would have no share of a sample")
    if args.accelerate_config and not Path(args.accelerate_config).is_file():
        raise UsageError(f"--accelerate-config {args.accelerate_config}: no such file")
    dataset, resume = preflight(cfg, args)
    out_dir = Path(cfg["train"]["output_dir"])
    if args.accelerate_config or args.num_processes:
        with OutputLock(out_dir, command_line(), "train"):
            pass  # free now: the main training process takes it for the run
        return launch(args, argv, Path(__file__).resolve())

    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    tc, oc = cfg["train"], cfg["optim"]
    # several processes without GPUs (torchrun on CPU): Accelerate needs cpu=True to pick gloo
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=tc["mixed_precision"], gradient_accumulation_steps=oc["grad_accum"],
                              log_with="tensorboard", project_dir=str(out_dir), cpu=multi_cpu)
    with contextlib.ExitStack() as held:  # one run per output folder (the kernel frees it if we are killed)
        refused = [None]
        if accelerator.is_main_process:
            try:
                held.enter_context(OutputLock(out_dir, command_line(), "train"))
            except LockError as e:
                refused = [str(e)]
        broadcast_object_list(refused)
        if refused[0]:
            raise LockError(refused[0])
        run["out_dir"] = out_dir
        return fit(args, cfg, dataset, resume, accelerator, out_dir, run)


def fit(args, cfg, dataset, resume, accelerator, out_dir: Path, run: dict) -> int:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from trainer.data import BucketSampler, check_buckets, collate
    from trainer.diffusion import build_diffusion
    from trainer.encoders import TextEncoder, build_vae

    tc, oc, dc = cfg["train"], cfg["optim"], cfg["data"]
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    sp = tc["sequence_parallel"]  # processes sharing each sample's tokens read the same batches
    data_rank, data_world = rank // sp, world // sp
    # encoders (frozen), model; the text-encoder folder of text.kind=tiny is written by the main process first
    if accelerator.is_main_process:
        text_path, text_kind = build_text_encoder(cfg["text"], out_dir, True)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        text_path, text_kind = build_text_encoder(cfg["text"], out_dir, False)
    text = TextEncoder(str(text_path), text_kind, cfg["text"]["max_length"]).to(device)
    vae_cfg = dict(cfg["vae"])
    vae = build_vae(vae_cfg.pop("kind"), **vae_cfg).to(device)
    try:
        check_buckets(dc["buckets"], vae)  # a frame count a video VAE cannot take: before any step
    except ValueError as e:
        raise UsageError(str(e)) from None
    sampler = BucketSampler(dataset.shapes(), dc["buckets"], dc["batch_size"], data_rank, data_world, seed=tc["seed"])
    set_seed(tc["seed"])  # same init on every process
    note = None
    if cfg["model"]["init_from"] and resume is None:
        model, note = init_model(cfg["model"]["init_from"], cfg, cfg.explicit, vae.channels, text.channels)
    else:
        model = build_model(cfg, vae.channels, text.channels)
    if cfg["model"]["gradient_checkpointing"]:
        model.enable_gradient_checkpointing()
    if sp > 1:
        from trainer.parallel import enable

        enable(model, sp)
    diffusion_cfg = dict(cfg["diffusion"])
    diffusion = build_diffusion(diffusion_cfg.pop("name"), **diffusion_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=oc["lr"], betas=tuple(oc["betas"]), eps=oc["eps"],
                            weight_decay=oc["weight_decay"])
    model, opt = accelerator.prepare(model, opt)
    inner = accelerator.unwrap_model(model)
    ema = EMA(inner.parameters(), tc["ema_decay"])
    state = TrainState()
    if resume is not None:
        load_resume_state(resume, accelerator, model, ema, state)
        accelerator.print(f"resumed from {resume} at step {state.step}")
    elif args.resume:
        accelerator.print(f"no checkpoint in {out_dir / 'checkpoints'}: starting from scratch")
    if note:
        accelerator.print(note)
    metrics_path = out_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        trim_metrics(metrics_path, state.step)  # steps after the checkpoint (or a killed first try) run again
        atomic_write_text(out_dir / "config.yaml", dump(cfg))
        accelerator.print(f"config (also in {out_dir / 'config.yaml'}):\n{dump(cfg)}", end="")
    accelerator.init_trackers("train")
    n_params = sum(p.numel() for p in inner.parameters())
    accelerator.print(f"STDiT {n_params / 1e6:.2f}M params, {len(dataset)} clips, "
                      f"{len(sampler)} batches/epoch/process, {world} process(es)"
                      + (f"; sequence parallel: {sp} processes per sample, {data_world} data-parallel group(s)"
                         if sp > 1 else ""))
    from trainer.estimate import RunPlan

    run_plan = RunPlan(cfg, vae, inner, data_world, dataset.shapes())  # what `plan` says of this run, also RUN/plan.json
    accelerator.print(run_plan.line())
    uneven = [b["bucket"] for b in run_plan.buckets if b["tokens"] % sp]
    if uneven:
        raise UsageError(f"train.sequence_parallel: {sp} does not divide the tokens per sample of bucket(s) {uneven}")
    if accelerator.is_main_process:
        run_plan.write(out_dir)

    # encoder outputs of recent captions (least recently used first out), within text.cache_mb: a T5-XXL
    # output is 1.9 MB, so caching every caption of a large dataset would fill the host's memory
    caption_cache: OrderedDict[str, tuple] = OrderedDict()
    cache_budget = float(cfg["text"]["cache_mb"]) * 2**20

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

    def data_failures() -> dict:
        return getattr(dataset, "failures", {})

    bar = tqdm(total=tc["max_steps"], initial=state.step, disable=not accelerator.is_main_process, desc="train")
    t_log, seen, losses, last, micro, norms = time.perf_counter(), 0, [], None, 0, []
    spikes = SpikeWatch(tc["spike_factor"], logged_losses(metrics_path) if accelerator.is_main_process else [])
    loader_gen = torch.Generator().manual_seed(tc["seed"])
    drop_p = inner.config.class_dropout_prob
    run["step"] = state.step
    model.train()
    try:
        while state.step < tc["max_steps"]:
            sampler.set_epoch(state.epoch, state.position)
            dataset.epoch = state.epoch  # a new random frame window per epoch (deterministic, so resume is exact)
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                                 num_workers=dc["num_workers"], generator=loader_gen)
            for batch in loader:
                for clip_id, reason in dataset.note_failures(batch).items():  # read in a loader worker or here
                    bar.write(f"[rank {rank}] data: clip {clip_id} could not be read and is not trained on: {reason}")
                empty = not batch["clip_id"]  # every clip of the batch failed (trainer.data: never replaced)
                if world > 1:  # all processes skip together: a lone skip would pair DDP's all-reduces wrongly
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
                    gens = sample_generators(tc["seed"], state.step, micro, batch["clip_id"])
                    drop = torch.tensor([torch.rand(1, generator=g).item() < drop_p for g in gens], device=device)
                    loss = diffusion.loss(model, x0, y, mask, generator=gens, drop=drop)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:  # the norm before clipping, logged (grad_clip 0: never clipped)
                        norm = accelerator.clip_grad_norm_(model.parameters(), oc["grad_clip"] or math.inf)
                        norms.append(torch.as_tensor(math.nan if norm is None else norm).detach().float().cpu())
                    for g in opt.param_groups:  # warm-up, then optim.schedule
                        g["lr"] = learning_rate(oc, state.step, tc["max_steps"])
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                state.position += 1
                seen += len(x0) * data_world
                losses.append(loss.detach())
                if not accelerator.sync_gradients:
                    micro += 1
                    continue
                micro = 0
                state.step += 1
                run["step"] = state.step
                ema.step(inner.parameters())
                bar.update(1)
                if state.step % tc["log_every"] == 0 or state.step == tc["max_steps"]:
                    last = accelerator.gather(torch.stack(losses).mean()[None]).mean().item()
                    rate = seen / (time.perf_counter() - t_log)
                    if "measured" not in run_plan.info:  # a few steps have run: the time left at their rate
                        line = run_plan.measured(state.step, rate)
                        if accelerator.is_main_process:
                            bar.write(line)
                            run_plan.write(out_dir)
                    failed = int(accelerator.gather(torch.tensor([len(data_failures())], device=device)).sum())
                    norm = torch.stack(norms)
                    metrics = {"step": state.step, "loss": last, "samples_per_s": rate, "lr": opt.param_groups[0]["lr"],
                               "grad_norm": norm.mean().item(), "grad_norm_max": norm.max().item(),
                               "data_failures": failed}  # summed over processes (a clip may count on two)
                    spike = spikes.check(last)  # a jump far above the recent median: the run may be diverging
                    metrics["spike"] = spike is not None
                    if spike and accelerator.is_main_process:
                        bar.write(f"train: warning: loss spike at step {state.step}: {spike} (grad norm "
                                  f"{metrics['grad_norm']:.3g}, lr {metrics['lr']:.3g}); lower optim.lr or decay it "
                                  "(optim.schedule)", file=sys.stderr)
                    accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=state.step)
                    if accelerator.is_main_process:
                        with open(metrics_path, "a") as f:
                            f.write(json.dumps(metrics) + "\n")
                    bar.set_postfix(loss=f"{last:.4f}", samples_s=f"{rate:.1f}")
                    t_log, seen, losses, norms = time.perf_counter(), 0, [], []
                if state.step % tc["ckpt_every"] == 0 or state.step == tc["max_steps"]:
                    save_checkpoint(accelerator, out_dir, state.step, model, ema, state, cfg, text_path, tc["keep_last"])
                if state.step in (args.kill_at_step, args.interrupt_at_step):
                    os.kill(os.getpid(), signal.SIGKILL if state.step == args.kill_at_step else signal.SIGINT)
                if state.step >= tc["max_steps"]:
                    break
            else:
                state.epoch, state.position = state.epoch + 1, 0
    finally:
        bar.close()  # before any message about an interruption
    accelerator.end_training()
    final = checkpoints(out_dir)
    failed = len(data_failures())
    accelerator.print(f"done: {state.step} steps, last logged loss "
                      f"{'n/a' if last is None or math.isnan(last) else f'{last:.4f}'}, "
                      f"checkpoint {final[-1] if final else 'none'}"
                      + (f", {failed} clip(s) could not be read (data_failures in metrics.jsonl)" if failed else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
