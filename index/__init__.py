"""The data contract (Clip record, manifests), video reading, embeddings, dedup, shards and data cards."""

from .manifest import ManifestError, PartStore, read_manifest, write_manifest
from .record import CORE_COLUMNS, Clip, file_sha256, make_clip_id
from .video import VideoError, VideoInfo, iter_frames, iter_many, probe, read_frames, read_many, sample_indices

__all__ = [
    "CORE_COLUMNS", "Clip", "ManifestError", "PartStore", "VideoError", "VideoInfo", "file_sha256",
    "iter_frames", "iter_many", "make_clip_id", "probe", "read_frames", "read_manifest", "read_many", "sample_indices",
    "write_manifest",
]
