"""Optional pre-extraction: encode every clip once (VAE latents + text tokens) so training never re-encodes.

    python -m trainer.extract --config CONFIG.yaml --data SHARDS_OR_MANIFEST -o features.safetensors
    accelerate launch trainer/train.py --config CONFIG.yaml --data features.safetensors ...

Each clip is encoded at its bucket with the centred frame window (no random temporal crop afterwards).
The file is safetensors: `latents.N`, `y.N`, `mask.N` per clip; captions, clip ids and buckets in its metadata.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch


@torch.no_grad()
def extract_features(dataset, sampler, vae, text, out_path, device="cpu") -> int:
    from safetensors.torch import save_file

    dataset.deterministic = True
    tensors, meta = {}, []
    for batch in sampler:
        samples = [dataset[item] for item in batch]
        latents = vae.encode(torch.stack([s["video"] for s in samples]).to(device)).cpu()
        y, mask = text([s["caption"] for s in samples])
        for k, ((i, bucket), s) in enumerate(zip(batch, samples)):
            if any(m["index"] == int(i) for m in meta):
                continue  # a bucket's last batch is topped up with repeats
            n = len(meta)
            tensors[f"latents.{n}"] = latents[k].contiguous()
            tensors[f"y.{n}"] = y[k].cpu().contiguous()
            tensors[f"mask.{n}"] = mask[k].cpu().to(torch.uint8).contiguous()
            meta.append({"index": int(i), "caption": s["caption"], "clip_id": s["clip_id"], "bucket": list(bucket)})
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"clips": json.dumps(meta)})
    os.replace(tmp, out_path)  # complete or absent
    return len(meta)


class FeatureDataset(torch.utils.data.Dataset):
    """Serves a features file: `{"latents", "y", "mask", "caption", "clip_id"}` per clip."""

    def __init__(self, path):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            self.meta = json.loads(f.metadata()["clips"])
            self.tensors = {k: f.get_tensor(k) for k in f.keys()}
        if not self.meta:
            raise ValueError(f"{path}: no clips in the features file")

    def __len__(self) -> int:
        return len(self.meta)

    def shapes(self) -> list[tuple[int, int, int]]:
        return [tuple(m["bucket"]) for m in self.meta]

    def __getitem__(self, item):
        i = int(item[0] if isinstance(item, tuple) else item)
        return {"latents": self.tensors[f"latents.{i}"], "y": self.tensors[f"y.{i}"],
                "mask": self.tensors[f"mask.{i}"].bool(), "caption": self.meta[i]["caption"],
                "clip_id": self.meta[i]["clip_id"]}


def main(argv=None) -> int:
    from trainer.config import load_config
    from trainer.data import BucketSampler, open_dataset
    from trainer.encoders import TextEncoder, build_text_encoder, build_vae

    p = argparse.ArgumentParser(description="Encode clips once into a features file for training.")
    p.add_argument("--config", required=True)
    p.add_argument("--data", required=True, help="shards folder or manifest")
    p.add_argument("-o", "--output", required=True, help="features.safetensors")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    dc = cfg["data"]
    out_dir = Path(cfg["train"]["output_dir"])
    text_path, kind = build_text_encoder(cfg["text"], out_dir)
    text = TextEncoder(str(text_path), kind, cfg["text"]["max_length"]).to(args.device)
    vae_cfg = dict(cfg["vae"])
    vae = build_vae(vae_cfg.pop("kind"), **vae_cfg).to(args.device)
    dataset = open_dataset(args.data, dc["frame_interval"])
    sampler = BucketSampler(dataset.shapes(), dc["buckets"], dc["batch_size"], shuffle=False)
    n = extract_features(dataset, sampler, vae, text, args.output, args.device)
    print(f"{args.output}: {n} clips encoded (text encoder {text_path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
