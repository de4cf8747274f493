"""Training data: clips from WebDataset shards or a captioned manifest, or features pre-computed by
`trainer.extract`, bucketed by (frames, height, width).

A sample is `{"video": (3, T, H, W) float in [-1, 1], "caption": str, "clip_id": str}`, where (T, H, W) is
the sample's bucket (features: `{"latents", "y", "mask", "caption", "clip_id"}`). The bucket sampler draws whole
batches from one bucket, shards them over processes and remembers its position, so a resumed run continues with
the next batch. Frames are always read through `index.video` (one sequential decode per clip).

A clip that cannot be read (bad input) is never replaced by another: `__getitem__` returns a failure marker, and
`collate` drops it from the batch and lists it in `batch["failed"]` ({clip_id: one-line reason}). Loader workers
are separate processes, so the training loop hands every batch to `dataset.note_failures(batch)`, which keeps
`dataset.failures` complete in the main process and returns the failures not seen before (to log). A batch
whose clips all failed has no tensors (`batch["clip_id"] == []`): the loop skips it.
"""

from __future__ import annotations

import abc
import json
import math
import struct
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from index import storage
from index.engine import BadInput
from index.video import read_frames


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


def _one_line(err) -> str:
    return " ".join(str(err).split())[:300]


class TrainingDataset(torch.utils.data.Dataset, abc.ABC):
    """What the training loop needs of a dataset: `shapes()` for the sampler and the failure count."""

    def __init__(self):
        self.failures: dict[str, str] = {}  # clip_id -> one-line reason: clips that could not be read
        self._reported: set[str] = set()

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, item) -> dict: ...

    @abc.abstractmethod
    def shapes(self) -> list[tuple[int, int, int]]:
        """(frames, height, width) of each sample, for the bucket sampler."""

    def note_failures(self, batch: dict) -> dict[str, str]:
        """Merge `batch["failed"]` into `self.failures` (whatever process read the batch); the ones new here."""
        failed = batch.get("failed", {})
        self.failures.update(failed)
        new = {k: v for k, v in failed.items() if k not in self._reported}
        self._reported.update(new)
        return new

    def _failed(self, clip_id: str, err) -> dict:
        self.failures[clip_id] = _one_line(err)
        return {"failed": clip_id, "reason": self.failures[clip_id]}


class ClipDataset(TrainingDataset):
    """Rows with `clip_id, caption, num_frames, width, height`; `__getitem__((i, (T, H, W)))` reads row i at a
    bucket, or returns `{"failed": clip_id, "reason": ...}` when the clip cannot be read."""

    def __init__(self, rows: pd.DataFrame, frame_interval: int = 1, seed: int = 0, cache: bool = False):
        super().__init__()
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

    def __len__(self) -> int:
        return len(self.rows)

    def shapes(self) -> list[tuple[int, int, int]]:
        """(num_frames, height, width) of each clip, for the bucket sampler."""
        return list(zip(self.rows["num_frames"].astype(int), self.rows["height"].astype(int),
                        self.rows["width"].astype(int)))

    @abc.abstractmethod
    def _source(self, row) -> tuple[object, int]:
        """(path or bytes, frame offset of the clip's first frame in that source)."""

    def __getitem__(self, item):
        i, bucket = item if isinstance(item, tuple) else (item, (8, 64, 64))
        try:
            return self._load(int(i), bucket)
        except BadInput as err:  # this clip's failure, never another clip in its place; a bug propagates
            return self._failed(str(self.rows.iloc[int(i)]["clip_id"]), err)

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

        from index.manifest import manifest_folder

        super().__init__(read_manifest(path), frame_interval, seed, cache)
        self.base = manifest_folder(path)

    def _source(self, row):
        clip_path = row.get("clip_path")
        if isinstance(clip_path, str) and clip_path:
            return self._resolve(clip_path), 0
        return self._resolve(row["video_path"]), int(row["start_frame"])

    def _resolve(self, p: str) -> str:
        """A path the manifest holds: a URL or an absolute path as it is, a relative one under the manifest's
        folder (unless it names a file from here)."""
        if storage.is_remote(p) or Path(p).is_absolute() or (not storage.is_remote(self.base) and Path(p).exists()):
            return p
        return str(self.base / p)


class ShardDataset(ClipDataset):
    """`SHARDS_DIR/*.tar` WebDataset shards (`<key>.mp4` + `<key>.json`), listed by `SHARDS_DIR/index.parquet`.

    build-shards records each sample's `shard`, `offset` (of the `.mp4` member's data in its tar) and `size`
    in index.parquet: the dataset opens without reading a tar and seeks straight to a sample. Shards written
    before those columns existed are located once by reading every tar header.
    """

    def __init__(self, shards_dir, frame_interval: int = 1, seed: int = 0, cache: bool = False):
        self.dir = storage.location(shards_dir)
        index = self.dir / "index.parquet"
        rows = _read_parquet(index) if storage.exists(index) else None
        if rows is not None and "key" not in rows.columns:  # the key is the clip id unless build-shards sanitised it
            rows = rows.assign(key=rows["clip_id"].astype(str))
        located = rows is not None and {"shard", "offset", "size"} <= set(rows.columns) \
            and not rows[["shard", "offset", "size"]].isna().any(axis=None)
        if located:
            rows = rows.assign(offset=rows["offset"].astype("int64"), size=rows["size"].astype("int64"))
        else:
            rows = self._scan(rows)
        super().__init__(rows, frame_interval, seed, cache)

    def _scan(self, rows: pd.DataFrame | None) -> pd.DataFrame:
        """Locate every `.mp4` member by reading the tar headers (shards without offsets in index.parquet)."""
        tars = sorted(self.dir / n for n in storage.listing(self.dir) if n.endswith(".tar"))
        if not tars:
            raise ValueError(f"{self.dir}: no *.tar shards")
        members: dict[str, tuple[str, int, int]] = {}  # sample key -> (tar name, offset, size)
        metas = []
        for tar in tars:
            with storage.open_read(tar) as f, tarfile.open(fileobj=f) as tf:
                for m in tf.getmembers():
                    key, _, ext = m.name.rpartition(".")
                    if ext == "mp4":
                        members[key] = (tar.name, m.offset_data, m.size)
                    elif ext == "json" and rows is None:
                        metas.append(json.loads(tf.extractfile(m).read()))
        if rows is None:
            if not metas:
                raise ValueError(f"{self.dir}: no samples in the *.tar shards")
            rows = pd.DataFrame(metas)
            rows = rows.assign(key=rows["clip_id"].astype(str)) if "key" not in rows else rows
        rows = rows[rows["key"].astype(str).isin(members)]
        where = [members[str(k)] for k in rows["key"]]
        return rows.assign(shard=[w[0] for w in where], offset=[w[1] for w in where], size=[w[2] for w in where])

    def _source(self, row):
        name, offset, size = str(row["shard"]), int(row["offset"]), int(row["size"])
        try:
            if storage.is_remote(self.dir):  # one ranged GET: the sample's bytes, not the shard
                fs, p = storage.fs_path(self.dir / name)
                data = fs.cat_file(p, start=offset, end=offset + size)
            else:
                with open(self.dir / name, "rb") as f:
                    f.seek(offset)
                    data = f.read(size)
        except FileNotFoundError:
            raise BadInput(f"cannot read shard {name} (not found)") from None
        except OSError as err:
            raise BadInput(f"cannot read shard {name} ({err.strerror or err})") from None
        if len(data) != size:
            raise BadInput(f"shard {name} ends before sample {row['key']} ({len(data)} of {size} bytes)")
        return data, 0


#################################################################################
#                      Pre-computed features (trainer.extract)                  #
#################################################################################

FEATURES_META = "features.json"  # written last by trainer.extract: the folder is complete when it exists
FEATURE_TENSORS = ("latents", "y", "mask")
SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "U8": torch.uint8}


def safetensors_header(path) -> tuple[dict, int]:
    """(header, data start) of a safetensors file: tensor name -> {dtype, shape, data_offsets}, and
    `__metadata__`; reads the header only."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(n))
    return header, 8 + n


class FeatureDataset(TrainingDataset):
    """A features folder of `trainer.extract`: `{"latents", "y", "mask", "caption", "clip_id"}` per clip.

    `index.parquet` gives each tensor's shard, byte offset, dtype and shape, so a sample is three reads from
    one file and nothing is held in memory but the index."""

    def __init__(self, path):
        super().__init__()
        self.dir = storage.location(path)
        if not storage.is_file(self.dir / FEATURES_META):
            raise ValueError(f"{self.dir}: incomplete features folder (no {FEATURES_META}): run the same "
                             f"`python -m trainer.extract` command again to finish it")
        self.meta = json.loads(storage.read_text(self.dir / FEATURES_META))
        rows = _read_parquet(self.dir / "index.parquet")
        if rows.empty:
            raise ValueError(f"{self.dir}: no clips in the features folder")
        self.clip_id, self.caption = rows["clip_id"].astype(str).tolist(), rows["caption"].astype(str).tolist()
        self.shard = rows["shard"].astype(str).tolist()
        self.buckets = list(zip(rows["frames"].astype(int), rows["height"].astype(int), rows["width"].astype(int)))
        self.where = {t: list(zip(rows[f"{t}_offset"].astype(int), rows[f"{t}_dtype"].astype(str),
                                  [tuple(int(v) for v in s) for s in rows[f"{t}_shape"]]))
                      for t in FEATURE_TENSORS}

    def __len__(self) -> int:
        return len(self.clip_id)

    def shapes(self) -> list[tuple[int, int, int]]:
        return list(self.buckets)

    def __getitem__(self, item):
        i = int(item[0] if isinstance(item, tuple) else item)
        out = {"caption": self.caption[i], "clip_id": self.clip_id[i]}
        with storage.open_read(self.dir / self.shard[i]) as f:
            for t in FEATURE_TENSORS:
                offset, dtype, shape = self.where[t][i]
                dt = SAFETENSORS_DTYPES[dtype]
                f.seek(offset)
                data = bytearray(f.read(math.prod(shape) * dt.itemsize))
                out[t] = torch.frombuffer(data, dtype=dt).reshape(shape) if data else torch.empty(shape, dtype=dt)
        out["latents"], out["y"], out["mask"] = out["latents"].float(), out["y"].float(), out["mask"].bool()
        return out


def open_dataset(path, frame_interval: int = 1, seed: int = 0, cache: bool = False) -> TrainingDataset:
    """A shards folder (with *.tar), a manifest (a file or dataset folder), or a features folder (trainer.extract);
    any of them may be a URL (s3://bucket/shards: see index.storage)."""
    from index.manifest import manifest_folder

    p = storage.location(path)
    if p.suffix == ".safetensors" and storage.is_file(p):
        raise ValueError(f"{p}: a single-file features file of an older trainer.extract; extract again into a "
                         f"folder (python -m trainer.extract ... -o FEATURES_DIR)")
    folder = storage.is_dir(p)
    names = storage.listing(p) if folder else {}
    if names and (FEATURES_META in names or any(n.startswith("features-") and n.endswith(".safetensors")
                                                for n in names)):
        return FeatureDataset(p)
    if names and manifest_folder(p) != p:  # a manifest written as a folder of Parquet files
        return ManifestDataset(p, frame_interval, seed, cache)
    if folder:
        from index.shards.build import read_state

        fmt = read_state(p).get("format", "webdataset")
        if fmt != "webdataset":
            raise ValueError(f"{p} holds a {fmt} export, made for another trainer; this one reads webdataset shards "
                             f"(build-shards --format webdataset), a clips manifest, or trainer.extract features")
        return ShardDataset(p, frame_interval, seed, cache)
    if storage.is_file(p):
        return ManifestDataset(p, frame_interval, seed, cache)
    raise ValueError(f"{p}: neither a shards folder nor a manifest file")


def _read_parquet(loc) -> pd.DataFrame:
    import pyarrow.parquet as pq

    with storage.open_read(loc) as f:
        return pq.read_table(f).to_pandas()


def check_buckets(buckets, vae) -> None:
    """Refuse, before any work, a bucket the VAE cannot encode (a frame count or size it does not take)."""
    for T, H, W in buckets:
        try:
            vae.latent_shape(int(T), int(H), int(W))
        except ValueError as err:
            raise ValueError(f"data.buckets: [{T}, {H}, {W}]: {err}") from None


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
    """Stack a batch; failed clips are dropped and listed in `failed` (clip_id -> reason), never replaced."""
    failed = {s["failed"]: s["reason"] for s in samples if "failed" in s}
    samples = [s for s in samples if "failed" not in s]
    batch = {"caption": [s["caption"] for s in samples], "clip_id": [s["clip_id"] for s in samples],
             "failed": failed}
    if not samples:  # every clip of the batch failed: nothing to train on
        return batch
    keys = ("latents", "y", "mask") if "latents" in samples[0] else ("video",)  # pre-extracted features or clips
    return batch | {k: torch.stack([s[k] for s in samples]) for k in keys}
