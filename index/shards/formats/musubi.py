"""`musubi`: the `folder` layout plus `musubi_dataset.toml`, a musubi-tuner dataset config ready to use.

The config is chosen from the clips themselves: `resolution` is the most common clip size rounded down to a
multiple of 16, with aspect-ratio buckets of that area and no upscaling (`bucket_no_upscale`), and
`target_frames` are 4k+1 counts taken from the shortest, median and longest clip (`frame_extraction = "head"`:
each clip gives its first N frames for every target N it can fill, so every clip fills at least the shortest).
Paths are absolute (musubi reads them from where it runs); the cache goes to `musubi_cache/` beside them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ...files import atomic_write_text
from .base import Context, FormatInfo, common_size, frame_targets, toml_value
from .folder import FolderWriter


def musubi_toml(index: pd.DataFrame, out_dir: Path) -> str:
    w, h = common_size(index) if len(index) else (16, 16)
    targets = frame_targets(index["clip_num_frames"]) if len(index) else [1]
    fps = sorted(set(index["clip_fps"].round(3))) if len(index) else []
    root = Path(out_dir).resolve()
    lines = [
        "# musubi-tuner dataset config written by build-shards from this folder's clips",
        f"# clip sizes: {_sizes(index)}; frame counts {_range(index['clip_num_frames'])}; fps {_list(fps)}",
        "[general]",
        f"resolution = {toml_value([w, h])}",
        'caption_extension = ".txt"',
        "batch_size = 1",
        "enable_bucket = true",
        "bucket_no_upscale = true",
        "",
        "[[datasets]]",
        f"video_directory = {toml_value(str(root / 'videos'))}",
        f"cache_directory = {toml_value(str(root / 'musubi_cache'))}",
        f"target_frames = {toml_value(targets)}",
        'frame_extraction = "head"',
    ]
    if len(fps) == 1:
        lines.append(f"# the clips run at {fps[0]:g} fps: set source_fps = {float(fps[0])!r} to let musubi resample "
                     "them to the model's rate (target_frames then count resampled frames)")
    return "\n".join(lines) + "\n"


def _sizes(index: pd.DataFrame) -> str:
    if not len(index):
        return "none"
    counts = (index["clip_width"].astype(str) + "x" + index["clip_height"].astype(str)).value_counts()
    return ", ".join(f"{s} ({n})" for s, n in counts.head(6).items())


def _range(s: pd.Series) -> str:
    return f"{int(s.min())}-{int(s.max())}" if len(s) else "none"


def _list(values) -> str:
    return ", ".join(f"{v:g}" for v in values) or "none"


class MusubiWriter(FolderWriter):
    name = "musubi"
    help = "the folder layout + musubi_dataset.toml (musubi-tuner)"

    def fixed_files(self) -> list[str]:
        return ["metadata.jsonl", "musubi_dataset.toml"]

    def write(self, clips: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        index = super().write(clips, ctx)
        atomic_write_text(ctx.out_dir / "musubi_dataset.toml", musubi_toml(index, ctx.out_dir))
        return index

    def describe(self, index: pd.DataFrame, out_dir: Path) -> FormatInfo:
        info = super().describe(index, out_dir)
        info.text += (" `musubi_dataset.toml` is a musubi-tuner dataset config for these files: resolution and "
                      "`target_frames` (4k+1) chosen from the clips' own sizes and lengths.")
        info.read = ("```bash\npython src/musubi_tuner/wan_cache_latents.py --dataset_config "
                     "path/to/this/folder/musubi_dataset.toml ...\n```")
        return info
