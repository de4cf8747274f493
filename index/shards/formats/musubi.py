"""`musubi`: the `folder` layout plus `musubi_dataset.toml`, a musubi-tuner dataset config ready to use.

The config is chosen from the clips themselves: `resolution` is the most common clip size rounded down to a
multiple of 16, with aspect-ratio buckets of that area and no upscaling (`bucket_no_upscale`), and
`target_frames` are 4k+1 counts taken from the shortest, median and longest clip (`frame_extraction = "head"`:
each clip gives its first N frames for every target N it can fill, so every clip fills at least the shortest).
Paths are absolute (musubi reads them from where it runs); the cache goes to `musubi_cache/` beside them.
"""

from __future__ import annotations

from ... import storage
from .base import ClipStats, Context, FormatInfo, toml_value
from .folder import FolderWriter


def folder_text(loc) -> str:
    """A folder as a config names it: an absolute path, or the URL."""
    return storage.text(loc) if storage.is_remote(loc) else str(loc.resolve())


def musubi_toml(stats: ClipStats, out_dir) -> str:
    w, h = stats.common_size()
    targets = stats.targets()
    fps = stats.fps
    root = storage.location(out_dir)
    lines = [
        "# musubi-tuner dataset config written by build-shards from this folder's clips",
        f"# clip sizes: {_sizes(stats)}; frame counts {_range(stats)}; fps {_list(fps)}",
        "[general]",
        f"resolution = {toml_value([w, h])}",
        'caption_extension = ".txt"',
        "batch_size = 1",
        "enable_bucket = true",
        "bucket_no_upscale = true",
        "",
        "[[datasets]]",
        f"video_directory = {toml_value(folder_text(root / 'videos'))}",
        f"cache_directory = {toml_value(folder_text(root / 'musubi_cache'))}",
        f"target_frames = {toml_value(targets)}",
        'frame_extraction = "head"',
    ]
    if len(fps) == 1:
        lines.append(f"# the clips run at {fps[0]:g} fps: set source_fps = {float(fps[0])!r} to let musubi resample "
                     "them to the model's rate (target_frames then count resampled frames)")
    return "\n".join(lines) + "\n"


def _sizes(stats: ClipStats) -> str:
    return ", ".join(f"{w}x{h} ({n})" for w, h, n in stats.sizes[:6]) or "none"


def _range(stats: ClipStats) -> str:
    return f"{int(stats.frames[0])}-{int(stats.frames[2])}" if stats.clips else "none"


def _list(values) -> str:
    return ", ".join(f"{v:g}" for v in values) or "none"


class MusubiWriter(FolderWriter):
    name = "musubi"
    help = "the folder layout + musubi_dataset.toml (musubi-tuner)"

    def fixed_files(self) -> list[str]:
        return ["metadata.jsonl", "musubi_dataset.toml"]

    def finish(self, ctx: Context, index: str) -> None:
        storage.write_text(ctx.out_dir / "musubi_dataset.toml", musubi_toml(ClipStats.of(ctx.con, index), ctx.out_dir))

    def describe(self, clips: int, files: list, out_dir) -> FormatInfo:
        info = super().describe(clips, files, out_dir)
        info.text += (" `musubi_dataset.toml` is a musubi-tuner dataset config for these files: resolution and "
                      "`target_frames` (4k+1) chosen from the clips' own sizes and lengths.")
        info.read = ("```bash\npython src/musubi_tuner/wan_cache_latents.py --dataset_config "
                     "path/to/this/folder/musubi_dataset.toml ...\n```")
        return info
