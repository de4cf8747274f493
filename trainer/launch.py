"""Before training: the checks of a run (`preflight`: everything a user can get wrong, before any model is
built) and starting its processes with Accelerate's launcher from this process (`launch`), so that their
one-line errors and exit codes are the command's own."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

from trainer.checkpoints import UsageError, check_hub_model, checkpoints, find_weights, resume_step

LAUNCH_FLAGS = ("--accelerate-config", "--num-processes")


def preflight(cfg, args):
    """Everything checkable without building a model; returns (dataset, resume checkpoint or None)."""
    from index.manifest import ManifestError
    from trainer.data import open_dataset

    tc, dc = cfg["train"], cfg["data"]
    if not dc["path"]:
        raise UsageError("no training data: pass --data SHARDS_DIR_OR_MANIFEST (or set data.path)")
    from index import storage

    storage.check_store(dc["path"], "--data")  # an unreachable bucket or a missing driver: one line
    if not storage.exists(dc["path"]):
        raise UsageError(f"--data {dc['path']}: no such file or folder")
    out_dir = Path(tc["output_dir"])
    ancestor = next(a for a in [out_dir, *out_dir.absolute().parents] if a.exists())
    if not ancestor.is_dir():
        raise UsageError(f"--output-dir {out_dir}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK):
        raise UsageError(f"--output-dir {out_dir}: {ancestor} is not writable")
    resume = None
    if args.resume == "latest":
        resume = (checkpoints(out_dir) or [None])[-1]
    elif args.resume:
        resume = find_weights(args.resume, allow_file=False).checkpoint
        if resume is None:
            raise UsageError(f"--resume {args.resume}: not a checkpoint of a run (RUN/checkpoints/STEP)")
    if cfg["model"]["init_from"] and resume is None:
        find_weights(cfg["model"]["init_from"])  # exists and is a kind we read
    start = resume_step(resume) if resume is not None else 0
    beyond = [c.name for c in checkpoints(out_dir) if int(c.name) > start]
    if beyond:  # another run's later checkpoints: its `--resume latest` and keep-last pruning would mix runs
        raise UsageError(f"{out_dir / 'checkpoints'} holds checkpoints past step {start} ({', '.join(beyond)}): "
                         "continue with --resume latest, or branch into a new --output-dir")
    if cfg["text"]["kind"] != "tiny":
        check_hub_model(cfg["text"]["path"], "text.path")
    check_hub_model(cfg["vae"].get("path"), "vae.path")
    try:
        dataset = open_dataset(dc["path"], dc["frame_interval"], seed=tc["seed"], cache=dc["cache"])
    except (ValueError, ManifestError) as e:
        raise UsageError(f"--data {dc['path']}: {e}") from None
    return dataset, resume


def launch(args, argv, script: Path) -> int:
    """Start the training processes from this process and return their exit code: with Accelerate's launcher,
    or, for several processes on a machine without GPUs (Accelerate's launcher runs one there), with torchrun
    (gloo). The processes print their own one-line errors; the launchers' reports of a failed process
    (tracebacks, log lines) are left out."""
    import logging
    import subprocess

    child, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in LAUNCH_FLAGS:
            skip = True
        elif not a.startswith(tuple(f"{f}=" for f in LAUNCH_FLAGS)):
            child.append(a)
    if args.num_processes and args.num_processes > 1 and not args.accelerate_config and not torch.cuda.is_available():
        from torch.distributed.run import get_args_parser, run

        start = lambda: run(get_args_parser().parse_args(  # noqa: E731
            ["--standalone", "--nproc_per_node", str(args.num_processes), str(script), *child]))
    else:
        from accelerate.commands.launch import launch_command, launch_command_parser

        largv = (["--config_file", args.accelerate_config] if args.accelerate_config else []) + \
                (["--num_processes", str(args.num_processes)] if args.num_processes else [])
        largs = launch_command_parser().parse_args([*largv, str(script), *child])
        start = lambda: launch_command(largs)  # noqa: E731
    quiet = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.distributed.run")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.CRITICAL)
    previous = signal.signal(signal.SIGINT, lambda *_: None)  # the processes get Ctrl-C and say what was kept
    try:
        start()
        return 0
    except subprocess.CalledProcessError as e:
        return e.returncode if e.returncode >= 0 else 128 - e.returncode
    except Exception as e:  # torchrun's ChildFailedError / SignalException: the processes printed their lines
        failures = getattr(e, "failures", None)
        if failures:
            code = next(iter(failures.values())).exitcode
            return code if code and code > 0 else 128 - code if code else 1
        if type(e).__name__ == "SignalException":
            return 130
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        for q, level in zip(quiet, levels):
            q.setLevel(level)
