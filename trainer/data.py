"""Training data: clips from WebDataset shards or from a captioned manifest, bucketed by (frames, height, width).

A sample is `{"video": (3, T, H, W) float in [-1, 1], "caption": str, "clip_id": str}`, where (T, H, W) is
the sample's bucket. The bucket sampler draws whole batches from one bucket, shards them over processes and
remembers its position, so a resumed run continues with the next batch. Frames are always read through
`index.video` (one sequential decode per clip).
"""

from __future__ import annotations

import io
import json
import math
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from index.video import VideoError, read_frames


def frame_indices(num_available: int, num_frames: int, interval: int, rng: np.random.Generator | None) -> list[int]:
    """`num_frames` indices spaced by `interval` inside [0, num_available); a random window when `rng` is given.

    Clips too short for the interval get evenly spread indices (repeating frames when shorter than the bucket).
    """
    span = (num_frames - 1) * interval + 1
    if num_available >= span:
        start = int(rng.integers(0, num_available - span + 1)) if rng is not None else (num_available - span) // 2
        return [start + k * interval for k in range(num_frames)]
    return [int(round(x)) for x in np.linspace(0, max(num_available - 1, 0), num_frames)]


def resize_size(width: int, height: int, out_w: int, out_h: int) -> tuple[int, int]:
    """Decoder output size that covers (out_w, out_h) with the source aspect ratio (then centre-crop)."""
    scale = max(out_w / max(width, 1), out_h / max(height, 1))
    return max(out_w, math.ceil(width * scale)), max(out_h, math.ceil(height * scale))


def to_tensor(frames: np.ndarray, out_w: int, out_h: int) -> torch.Tensor:
    """(T, h, w, 3) uint8 -> centre crop -> (3, T, out_h, out_w) float in [-1, 1]."""
    _, h, w, _ = frames.shape
    top, left = (h - out_h) // 2, (w - out_w) // 2
    crop = np.ascontiguousarray(frames[:, top:top + out_h, left:left + out_w])
    return torch.from_numpy(crop).permute(3, 0, 1, 2).float() / 127.5 - 1.0


class ClipDataset(torch.utils.data.Dataset):
    """Rows with `caption, num_frames, width, height`; `__getitem__((i, (T, H, W)))` reads row i at a bucket."""

    def __init__(self, rows: pd.DataFrame, frame_interval: int = 1, seed: int = 0, cache: bool = False):
        if "caption" not in rows.columns:
            raise ValueError("the training data has no 'caption' column: run caption-videos first")
        rows = rows[rows["caption"].notna() & (rows["caption"].astype(str).str.len() > 0)]
        if "keep" in rows.columns:
            rows = rows[rows["keep"].fillna(True).astype(bool)]
        if rows.empty:
            raise ValueError("the training data has no captioned clips")
        self.rows = rows.reset_index(drop=True)
        self.frame_interval, self.seed, self.epoch = int(frame_interval), int(seed), 0
        self.cache = {} if cache else None  # decoded frames kept in memory (small datasets, benchmarks)
        self.deterministic = False  # True: the centred frame window instead of a random one
        self.failed: dict[int, str] = {}  # row -> reason, for clips that could not be decoded

    def __len__(self) -> int:
        return len(self.rows)

    def shapes(self) -> list[tuple[int, int, int]]:
        """(num_frames, height, width) of each clip, for the bucket sampler."""
        return list(zip(self.rows["num_frames"].astype(int), self.rows["height"].astype(int),
                        self.rows["width"].astype(int)))

    def _source(self, row) -> tuple[object, int]:
        """(path or bytes, frame offset of the clip's first frame in that source)."""
        raise NotImplementedError

    def __getitem__(self, item):
        i, bucket = item if isinstance(item, tuple) else (item, (8, 64, 64))
        for attempt in range(len(self)):  # a clip that cannot be decoded is replaced by the next one
            j = (int(i) + attempt) % len(self)
            try:
                return self._load(j, bucket)
            except VideoError as err:
                if j not in self.failed:
                    self.failed[j] = str(err)
                    warnings.warn(f"skipping clip {self.rows.iloc[j]['clip_id']}: {err}", stacklevel=2)
        raise VideoError("no clip of the dataset can be decoded")

    def _load(self, i: int, bucket):
        T, H, W = bucket
        row = self.rows.iloc[int(i)]
        rng = None if self.deterministic else np.random.default_rng([self.seed, self.epoch, int(i)])
        idx = frame_indices(int(row["num_frames"]), T, self.frame_interval, rng)
        size = resize_size(int(row["width"]), int(row["height"]), W, H)
        key = (int(i), tuple(idx), size)
        frames = None if self.cache is None else self.cache.get(key)
        if frames is None:
            src, offset = self._source(row)
            frames = read_frames(src, [offset + k for k in idx], size=size)
            if self.cache is not None:
                self.cache[key] = frames
        return {"video": to_tensor(frames, W, H), "caption": str(row["caption"]), "clip_id": str(row["clip_id"])}


class ManifestDataset(ClipDataset):
    """A captioned clips manifest (`clips.parquet`); frames come from the source video (or `clip_path`)."""

    def __init__(self, path, frame_interval: int = 1, seed: int = 0, cache: bool = False):
        from index.manifest import read_manifest

        super().__init__(read_manifest(path), frame_interval, seed, cache)
        self.base = Path(path).parent

    def _source(self, row):
        clip_path = row.get("clip_path")
        if isinstance(clip_path, str) and clip_path:
            return self._resolve(clip_path), 0
        return self._resolve(row["video_path"]), int(row["start_frame"])

    def _resolve(self, p: str) -> str:
        path = Path(p)
        return str(path if path.is_absolute() or path.exists() else self.base / path)


class ShardDataset(ClipDataset):
    """`SHARDS_DIR/*.tar` WebDataset shards (`<key>.mp4` + `<key>.json`), listed by `SHARDS_DIR/index.parquet`.

    Members are located once by reading the tar headers, then read by offset: random access for buckets.
    """

    def __init__(self, shards_dir, frame_interval: int = 1, seed: int = 0, cache: bool = False):
        self.dir = Path(shards_dir)
        tars = sorted(self.dir.glob("*.tar"))
        if not tars:
            raise ValueError(f"{self.dir}: no *.tar shards")
        self.members: dict[str, tuple[str, int, int]] = {}  # sample key -> (tar name, offset, size)
        metas = []
        for tar in tars:
            with tarfile.open(tar) as tf:
                for m in tf.getmembers():
                    key, _, ext = m.name.rpartition(".")
                    if ext == "mp4":
                        self.members[key] = (tar.name, m.offset_data, m.size)
                    elif ext == "json" and not (self.dir / "index.parquet").exists():
                        metas.append(json.loads(tf.extractfile(m).read()))
        index = self.dir / "index.parquet"
        rows = pd.read_parquet(index) if index.exists() else pd.DataFrame(metas)
        if "key" not in rows.columns:  # the sample key is the clip id unless build-shards had to sanitise it
            rows = rows.assign(key=rows["clip_id"].astype(str))
        rows = rows[rows["key"].astype(str).isin(self.members)]
        super().__init__(rows, frame_interval, seed, cache)

    def _source(self, row):
        name, offset, size = self.members[str(row["key"])]
        with open(self.dir / name, "rb") as f:
            f.seek(offset)
            return io.BytesIO(f.read(size)).getvalue(), 0


def open_dataset(path, frame_interval: int = 1, seed: int = 0, cache: bool = False):
    """A shards folder (with *.tar), a manifest file, or a pre-extracted features file (trainer.extract)."""
    p = Path(path)
    if p.suffix == ".safetensors" and p.is_file():
        from trainer.extract import FeatureDataset

        return FeatureDataset(p)
    if p.is_dir():
        return ShardDataset(p, frame_interval, seed, cache)
    if p.is_file():
        return ManifestDataset(p, frame_interval, seed, cache)
    raise ValueError(f"{p}: neither a shards folder nor a manifest file")


class BucketSampler(torch.utils.data.Sampler):
    """Batches of `(index, (T, H, W))` from one bucket each; every process gets its own share.

    Each clip goes to the bucket of the nearest aspect ratio, preferring the most frames it can fill.
    A bucket's last partial batch is topped up with clips of the same bucket, so even a ten-clip dataset
    yields batches. `set_epoch(epoch, start)` selects the epoch's order and skips the batches already trained
    on (the training loop counts consumed batches itself: loader workers prefetch ahead of training).
    """

    def __init__(self, shapes, buckets, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True):
        if not buckets:
            raise ValueError("no buckets configured: give data.buckets as [[frames, height, width], ...]")
        self.buckets = [tuple(int(v) for v in b) for b in buckets]
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.seed, self.shuffle = int(seed), shuffle
        self.epoch, self.start = 0, 0
        self.assignment = [self.assign(*s) for s in shapes]

    def assign(self, frames: int, height: int, width: int) -> int:
        ar = height / max(width, 1)
        def key(b):
            T, H, W = self.buckets[b]
            return (round(abs(math.log(ar / (H / W))), 3), T > frames, -T if T <= frames else T)
        return min(range(len(self.buckets)), key=key)

    def batches(self, epoch: int) -> list[list[tuple]]:
        g = np.random.default_rng([self.seed, epoch])
        out = []
        for b in sorted(set(self.assignment)):
            idx = [i for i, a in enumerate(self.assignment) if a == b]
            if self.shuffle:
                idx = [idx[j] for j in g.permutation(len(idx))]
            n = len(idx)
            while len(idx) % self.batch_size:  # top up the last batch from the same bucket
                idx.append(idx[(len(idx) - n) % n])
            out += [[(i, self.buckets[b]) for i in idx[k:k + self.batch_size]]
                    for k in range(0, len(idx), self.batch_size)]
        if self.shuffle:
            out = [out[j] for j in g.permutation(len(out))]
        n = len(out)
        while len(out) % self.world_size:  # every process gets the same number of batches: a rank repeats
            k = len(out) % self.world_size  # one of its own (shares stay disjoint), or, with fewer batches
            out.append(out[k if k < n else (len(out) - n) % n])  # than processes, another's
        return out[self.rank::self.world_size]

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def __len__(self) -> int:
        return len(self.batches(self.epoch))

    def __iter__(self):
        yield from self.batches(self.epoch)[self.start:]


def collate(samples: list[dict]) -> dict:
    if "latents" in samples[0]:  # pre-extracted features
        return {k: torch.stack([s[k] for s in samples]) for k in ("latents", "y", "mask")} | {
            "caption": [s["caption"] for s in samples], "clip_id": [s["clip_id"] for s in samples]}
    return {"video": torch.stack([s["video"] for s in samples]), "caption": [s["caption"] for s in samples],
            "clip_id": [s["clip_id"] for s in samples]}
