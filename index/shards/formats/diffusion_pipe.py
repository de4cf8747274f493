"""`diffusion-pipe`: the `folder` layout plus `diffusion_pipe_dataset.toml`, a diffusion-pipe dataset config.

Chosen from the clips: `resolutions` is the most common clip size rounded down to a multiple of 16 (its area is
the training area), `ar_buckets` are the width/height ratios of the standard aspect ratios the clips have
(16:9 -> 1.778), and `frame_buckets` are 1 plus 4k+1 counts from the shortest, median and longest clip
(diffusion-pipe puts a video in the longest bucket it fills and drops a video shorter than every bucket but 1,
so the shortest clip's count keeps every clip). The directory path is absolute.
"""

from __future__ import annotations

from ... import storage
from ..names import ASPECTS, aspect_name
from .base import ClipStats, Context, FormatInfo, toml_value
from .folder import FolderWriter
from .musubi import folder_text


def diffusion_pipe_toml(stats: ClipStats, out_dir) -> str:
    w, h = stats.common_size()
    names = sorted({aspect_name(a, b) for a, b, _ in stats.sizes}, key=lambda n: -ASPECTS[n]) or ["1:1"]
    ratios = [round(ASPECTS[n], 3) for n in names]
    frames = sorted({1, *stats.targets()})
    return "\n".join([
        "# diffusion-pipe dataset config written by build-shards from this folder's clips",
        f"# aspect ratios (w:h) of the clips: {', '.join(names)}",
        f"resolutions = {toml_value([[w, h]])}",
        "enable_ar_bucket = true",
        f"ar_buckets = {toml_value(ratios)}",
        f"frame_buckets = {toml_value(frames)}",
        "",
        "[[directory]]",
        f"path = {toml_value(folder_text(storage.location(out_dir) / 'videos'))}",
        "num_repeats = 1",
    ]) + "\n"


class DiffusionPipeWriter(FolderWriter):
    name = "diffusion-pipe"
    help = "the folder layout + diffusion_pipe_dataset.toml (diffusion-pipe)"

    def fixed_files(self) -> list[str]:
        return ["metadata.jsonl", "diffusion_pipe_dataset.toml"]

    def finish(self, ctx: Context, index: str) -> None:
        storage.write_text(ctx.out_dir / "diffusion_pipe_dataset.toml",
                           diffusion_pipe_toml(ClipStats.of(ctx.con, index), ctx.out_dir))

    def describe(self, clips: int, files: list, out_dir) -> FormatInfo:
        info = super().describe(clips, files, out_dir)
        info.text += (" `diffusion_pipe_dataset.toml` is a diffusion-pipe dataset config for these files: "
                      "resolution, aspect-ratio buckets and frame buckets chosen from the clips.")
        info.read = ("```toml\n# in diffusion-pipe's training config\n"
                     "dataset = 'path/to/this/folder/diffusion_pipe_dataset.toml'\n```")
        return info
