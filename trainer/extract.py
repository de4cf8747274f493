"""Pre-computed features: encode every clip once (VAE latents + text tokens) so training never re-encodes.

    python -m trainer.extract --config CONFIG.yaml --data SHARDS_OR_MANIFEST -o FEATURES_DIR [--shard-clips 64]
    accelerate launch trainer/train.py --config CONFIG.yaml --data FEATURES_DIR ...

Each clip is encoded at its bucket with the centred frame window (no random temporal crop afterwards).
FEATURES_DIR holds
  features-00000.safetensors  up to SHARD_CLIPS clips: `latents.J`, `y.J`, `mask.J` for the shard's J-th clip;
                              its metadata names the shard's planned clips, their captions and buckets, the failures
                              and the settings that made it
  index.parquet               one row per clip: clip_id, caption, frames, height, width, shard, and per tensor its
                              byte offset, dtype and shape in the shard (trainer.data.FeatureDataset reads it)
  features.json               settings and counts, written last: the folder is complete when it exists
  failed.jsonl                clips that could not be read

Memory is one shard's features whatever the dataset size: shards are written as they are computed and the index
is streamed from their headers. The plan is fixed by the data and settings (clips in (bucket, dataset row) order,
SHARD_CLIPS per shard), and every shard is written to a temp name and renamed, so after a kill (even -9) a shard
is complete or absent: the same command again encodes only the missing shards (one counts as done when its
metadata names the planned clips and settings) and gives the same files. Posterior samples use a generator seeded
per shard, so a shard does not depend on which run wrote it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from pathlib import Path

import torch

from trainer.data import FEATURE_TENSORS, FEATURES_META, BucketSampler, collate, safetensors_header

SHARD_NAME = "features-{:05d}.safetensors"
SHARD_RE = re.compile(r"^features-\d{5}\.safetensors$")
STORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def plan_shards(dataset, buckets, shard_clips: int) -> list[list[tuple[int, tuple]]]:
    """[(dataset index, bucket), ...] per shard: clips in (bucket, index) order, `shard_clips` per shard."""
    sampler = BucketSampler(dataset.shapes(), buckets, 1, shuffle=False)
    order = sorted(range(len(sampler.assignment)), key=lambda i: (sampler.assignment[i], i))
    items = [(i, sampler.buckets[sampler.assignment[i]]) for i in order]
    return [items[k:k + shard_clips] for k in range(0, len(items), shard_clips)]


def shard_meta(path: Path) -> dict | None:
    """A shard's metadata, or None when the file is not one of ours (never written completely, or foreign)."""
    try:
        header, _ = safetensors_header(path)
        return json.loads(header["__metadata__"]["shotcap"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@torch.no_grad()
def encode_shard(dataset, items, vae, text, batch_size: int, device, dtype: torch.dtype, seed: int):
    """(tensors, clips, failures) of one shard: same-bucket runs of `items` encoded `batch_size` at a time."""
    tensors, clips, failed = {}, [], {}
    cuda = torch.device(device).type == "cuda"
    with torch.random.fork_rng(devices=[torch.device(device).index or 0] if cuda else []):
        torch.manual_seed(seed)  # posterior samples depend on the shard alone, not on the run that writes it
        k = 0
        while k < len(items):
            bucket = items[k][1]
            run = [items[j] for j in range(k, min(k + batch_size, len(items))) if items[j][1] == bucket]
            k += len(run)
            batch = collate([dataset[item] for item in run])
            failed.update(batch["failed"])
            if not batch["clip_id"]:
                continue
            latents = vae.encode(batch["video"].to(device)).cpu()
            y, mask = text(batch["caption"])
            for b, (clip_id, caption) in enumerate(zip(batch["clip_id"], batch["caption"])):
                n = len(clips)
                tensors[f"latents.{n}"] = latents[b].to(dtype).contiguous()
                tensors[f"y.{n}"] = y[b].cpu().to(dtype).contiguous()
                tensors[f"mask.{n}"] = mask[b].cpu().to(torch.uint8).contiguous()
                clips.append({"clip_id": clip_id, "caption": caption, "bucket": list(bucket)})
    return tensors, clips, failed


def index_table(path: Path):
    """The index rows of one shard, as a pyarrow table, from its header alone."""
    import pyarrow as pa

    header, start = safetensors_header(path)
    clips = json.loads(header["__metadata__"]["shotcap"])["clips"]
    cols = {"clip_id": [c["clip_id"] for c in clips], "caption": [c["caption"] for c in clips],
            "frames": [c["bucket"][0] for c in clips], "height": [c["bucket"][1] for c in clips],
            "width": [c["bucket"][2] for c in clips], "shard": [path.name] * len(clips)}
    for t in FEATURE_TENSORS:
        entries = [header[f"{t}.{n}"] for n in range(len(clips))]
        cols[f"{t}_offset"] = [start + e["data_offsets"][0] for e in entries]
        cols[f"{t}_dtype"] = [e["dtype"] for e in entries]
        cols[f"{t}_shape"] = [list(e["shape"]) for e in entries]
    schema = pa.schema([("clip_id", pa.string()), ("caption", pa.string()), ("frames", pa.int64()),
                        ("height", pa.int64()), ("width", pa.int64()), ("shard", pa.string())]
                       + [f for t in FEATURE_TENSORS for f in (pa.field(f"{t}_offset", pa.int64()),
                          pa.field(f"{t}_dtype", pa.string()), pa.field(f"{t}_shape", pa.list_(pa.int64())))])
    return pa.table(cols, schema=schema)


def extract_features(dataset, buckets, vae, text, out_dir, *, shard_clips: int = 64, batch_size: int = 4,
                     device="cpu", dtype: str = "float32", seed: int = 0, settings: dict | None = None,
                     source: str = "", progress: bool = False, stop_after: int | None = None) -> dict:
    """Write the features folder (see the module docstring); returns counts. Resumable: done shards are kept.
    `settings`: what else the features depend on (encoders, frame interval), recorded in every shard; `source`:
    the data's path, for failed.jsonl. `stop_after`: SIGKILL this process after that many shards were written
    (fault injection for tests)."""
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    from index.files import atomic_write_text, remove_own_temps, temp_name
    from index.manifest import failure, write_failed
    from index.progress import Progress

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_own_temps(out)
    store = STORE_DTYPES[dtype]
    dataset.deterministic = True
    plan = plan_shards(dataset, buckets, shard_clips)
    settings = {**(settings or {}), "buckets": [list(b) for b in buckets], "shard_clips": shard_clips,
                "dtype": dtype, "seed": seed}
    clip_ids = dataset.rows["clip_id"].astype(str).tolist()
    ids = [[clip_ids[i] for i, _ in items] for items in plan]
    (out / FEATURES_META).unlink(missing_ok=True)  # complete again only when this run ends
    written = kept = 0
    with Progress(len(plan), "extract", "shards", enabled=progress) as bar:
        for s, items in enumerate(plan):
            path = out / SHARD_NAME.format(s)
            meta = shard_meta(path) if path.exists() else None
            if meta is not None and meta["plan"] == ids[s] and meta["settings"] == settings:
                kept += 1
                bar.advance(1)
                continue
            tensors, clips, failed = encode_shard(dataset, items, vae, text, batch_size, device, store, seed + s)
            info = {"plan": ids[s], "settings": settings, "clips": clips, "failed": failed}
            tmp = temp_name(path)  # complete or absent: temp file, fsync, rename
            try:
                save_file(tensors, str(tmp), metadata={"shotcap": json.dumps(info)})
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            del tensors
            written += 1
            bar.advance(1)
            if stop_after is not None and written >= stop_after:
                os.kill(os.getpid(), signal.SIGKILL)
    for stale in out.iterdir():  # shards of an earlier plan (other data or shard size)
        if SHARD_RE.match(stale.name) and int(stale.name[9:14]) >= len(plan):
            stale.unlink()
    # the index, streamed shard by shard; failures and counts from the shard headers
    tmp = temp_name(out / "index.parquet")
    writer, clips, failures = None, 0, []
    try:
        for s in range(len(plan)):
            path = out / SHARD_NAME.format(s)
            table = index_table(path)
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            clips += table.num_rows
            failures += [failure(source or out, "extract", f"clip {c}: {r}")
                         for c, r in shard_meta(path)["failed"].items()]
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        tmp.unlink(missing_ok=True)
        raise ValueError("no clips to extract")
    os.replace(tmp, out / "index.parquet")
    write_failed(out, failures)
    counts = {"clips": clips, "failed": len(failures), "shards": len(plan), "written": written, "kept": kept}
    atomic_write_text(out / FEATURES_META, json.dumps({"format": "shotcap-features", "version": 1, "data": str(source),
                                                       "settings": settings, **counts}, indent=1) + "\n")
    return counts


def main(argv=None) -> int:
    from index.engine import Interrupted
    from index.files import OutputLock, command_line
    from index.manifest import run_cli
    from trainer.config import load_config
    from trainer.data import check_buckets, open_dataset
    from trainer.encoders import TextEncoder, build_text_encoder, build_vae

    p = argparse.ArgumentParser(prog="python -m trainer.extract",
                                description="Encode clips once into a features folder for training.")
    p.add_argument("--config", required=True)
    p.add_argument("--data", required=True, help="shards folder or manifest")
    p.add_argument("-o", "--output", required=True, help="features folder (resumable)")
    p.add_argument("--shard-clips", type=int, default=64, help="clips per features shard (memory: one shard)")
    p.add_argument("--dtype", choices=sorted(STORE_DTYPES), default="float32", help="stored latents and text")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kill-after-shards", type=int, help=argparse.SUPPRESS)  # fault injection for resume tests
    p.add_argument("overrides", nargs="*", help="section.key=value")
    args = p.parse_intermixed_args(argv)  # overrides may come before and after options

    def run(_argv) -> int:
        out = Path(args.output)
        try:  # user mistakes: one line, exit 2, before any work
            if out.exists() and not out.is_dir():
                raise ValueError(f"{out} exists and is not a folder")
            if args.shard_clips < 1:
                raise ValueError("--shard-clips must be at least 1")
            cfg = load_config(args.config, args.overrides)
            dc, vae_cfg = cfg["data"], dict(cfg["vae"])
            dataset = open_dataset(args.data, dc["frame_interval"])
            if not hasattr(dataset, "rows"):
                raise ValueError(f"{args.data}: already a features folder")
            vae = build_vae(vae_cfg.pop("kind"), **vae_cfg).to(args.device)
            check_buckets(dc["buckets"], vae)
        except (ValueError, RuntimeError) as err:
            p.error(str(err))
        with OutputLock(out, command_line(), "trainer.extract"):
            text_path, kind = build_text_encoder(cfg["text"], Path(cfg["train"]["output_dir"]))
            text = TextEncoder(str(text_path), kind, cfg["text"]["max_length"]).to(args.device)
            settings = {"vae": cfg["vae"], "text": {**cfg["text"], "path": str(text_path)},
                        "frame_interval": dc["frame_interval"]}
            try:
                counts = extract_features(dataset, dc["buckets"], vae, text, out, shard_clips=args.shard_clips,
                                          batch_size=dc["batch_size"], device=args.device, dtype=args.dtype,
                                          seed=cfg["train"]["seed"], settings=settings,
                                          source=str(args.data), progress=True, stop_after=args.kill_after_shards)
            except KeyboardInterrupt:
                raise Interrupted("the features shards written so far are kept") from None
        print(f"{out}: {counts['clips']} clips in {counts['shards']} shards ({counts['written']} written, "
              f"{counts['kept']} kept from an earlier run), {counts['failed']} failed "
              f"(see {out / 'failed.jsonl'}); text encoder {text_path}")
        return 0

    return run_cli("extract", run, argv)


if __name__ == "__main__":
    sys.exit(main())
