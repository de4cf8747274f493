"""`diffusion-pipe`: the `folder` layout plus `diffusion_pipe_dataset.toml`, a diffusion-pipe dataset config.

Chosen from the clips: `resolutions` is the most common clip size rounded down to a multiple of 16 (its area is
the training area), `ar_buckets` are the width/height ratios of the standard aspect ratios the clips have
(16:9 -> 1.778), and `frame_buckets` are 1 plus 4k+1 counts from the shortest, median and longest clip
(diffusion-pipe puts a video in the longest bucket it fills and drops a video shorter than every bucket but 1,
so the shortest clip's count keeps every clip). The directory path is absolute.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ...files import atomic_write_text
from ..names import ASPECTS, aspect_name
from .base import Context, FormatInfo, common_size, frame_targets, toml_value
from .folder import FolderWriter


def diffusion_pipe_toml(index: pd.DataFrame, out_dir: Path) -> str:
    w, h = common_size(index) if len(index) else (16, 16)
    names = sorted({aspect_name(a, b) for a, b in zip(index["clip_width"], index["clip_height"])},
                   key=lambda n: -ASPECTS[n]) if len(index) else ["1:1"]
    ratios = [round(ASPECTS[n], 3) for n in names]
    frames = sorted({1, *frame_targets(index["clip_num_frames"] if len(index) else [])})
    return "\n".join([
        "# diffusion-pipe dataset config written by build-shards from this folder's clips",
        f"# aspect ratios (w:h) of the clips: {', '.join(names)}",
        f"resolutions = {toml_value([[w, h]])}",
        "enable_ar_bucket = true",
        f"ar_buckets = {toml_value(ratios)}",
        f"frame_buckets = {toml_value(frames)}",
        "",
        "[[directory]]",
        f"path = {toml_value(str(Path(out_dir).resolve() / 'videos'))}",
        "num_repeats = 1",
    ]) + "\n"


class DiffusionPipeWriter(FolderWriter):
    name = "diffusion-pipe"
    help = "the folder layout + diffusion_pipe_dataset.toml (diffusion-pipe)"

    def fixed_files(self) -> list[str]:
        return ["metadata.jsonl", "diffusion_pipe_dataset.toml"]

    def write(self, clips: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        index = super().write(clips, ctx)
        atomic_write_text(ctx.out_dir / "diffusion_pipe_dataset.toml", diffusion_pipe_toml(index, ctx.out_dir))
        return index

    def describe(self, index: pd.DataFrame, out_dir: Path) -> FormatInfo:
        info = super().describe(index, out_dir)
        info.text += (" `diffusion_pipe_dataset.toml` is a diffusion-pipe dataset config for these files: "
                      "resolution, aspect-ratio buckets and frame buckets chosen from the clips.")
        info.read = ("```toml\n# in diffusion-pipe's training config\n"
                     "dataset = 'path/to/this/folder/diffusion_pipe_dataset.toml'\n```")
        return info
