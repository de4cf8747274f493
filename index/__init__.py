"""The data contract and the spine every stage stands on.

- `record`: the `Clip` row and its columns;  `manifest`: manifests, resumable parts, failed.jsonl
- `files`: atomic writes, cached content hashes, the output lock;  `video`: probing, reading, cutting (PyAV)
- `engine`: runs every stage's units (local processes or Ray);  `progress`, `hub`: what the user sees, model access
- rooms: `index.dedup` (embeddings, FAISS, duplicate groups: index-clips, search-clips),
  `index.shards` (writers, data card: build-shards)
"""

from .engine import BadInput, EngineOptions, Output, Stage, Unit, UsageError, run_stage
from .files import HashCache, OutputLock, atomic_write_bytes, atomic_write_text, file_sha256
from .manifest import ManifestError, PartStore, load_manifest, read_manifest, write_manifest
from .record import CORE_COLUMNS, Clip, make_clip_id
from .video import VideoError, VideoInfo, iter_frames, iter_many, probe, read_frames, read_many, sample_indices

__all__ = [
    "BadInput", "CORE_COLUMNS", "Clip", "EngineOptions", "HashCache", "ManifestError", "Output", "OutputLock",
    "PartStore", "Stage", "Unit", "UsageError", "VideoError", "VideoInfo", "atomic_write_bytes", "atomic_write_text",
    "file_sha256", "iter_frames", "iter_many", "load_manifest", "make_clip_id", "probe", "read_frames",
    "read_manifest", "read_many", "run_stage", "sample_indices", "write_manifest",
]
