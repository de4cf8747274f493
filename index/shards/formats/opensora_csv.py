"""`opensora-csv`: the clips as `clips/<key>.mp4` and Open-Sora's `opensora.csv`
(`path,text,num_frames,height,width,aspect_ratio,fps,resolution`; `path` absolute, `aspect_ratio` height/width
as Open-Sora computes it, `resolution` height*width), the values those of the written clip files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ...files import atomic_write_text
from .base import Context, FormatInfo, Writer


class OpenSoraCSVWriter(Writer):
    name = "opensora-csv"
    help = "clips/<key>.mp4 + opensora.csv (Open-Sora's columns)"
    media = "clips"

    def fixed_files(self) -> list[str]:
        return ["opensora.csv"]

    def write(self, clips: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        index = self.place_clips(clips, ctx, captions=False)
        h, w = index["clip_height"].astype(int), index["clip_width"].astype(int)
        csv = pd.DataFrame({
            "path": [str((ctx.out_dir / f).resolve()) for f in index["file"]],
            "text": index["caption"].astype(str).to_numpy(),
            "num_frames": index["clip_num_frames"].astype(int).to_numpy(),
            "height": h.to_numpy(), "width": w.to_numpy(),
            "aspect_ratio": (h / w).round(6).to_numpy(), "fps": index["clip_fps"].astype(float).to_numpy(),
            "resolution": (h * w).to_numpy(),
        }).sort_values("path", kind="stable")
        atomic_write_text(ctx.out_dir / "opensora.csv", csv.to_csv(index=False))
        return index

    def describe(self, index: pd.DataFrame, out_dir: Path) -> FormatInfo:
        return FormatInfo(
            text="`opensora.csv` with Open-Sora's columns (`path,text,num_frames,height,width,aspect_ratio,fps,"
                 "resolution`; `path` is absolute, `aspect_ratio` is height/width) and the clip files under "
                 "`clips/`.",
            read="```python\nimport pandas as pd\ndf = pd.read_csv(\"path/to/this/folder/opensora.csv\")\n```",
            data_files=["opensora.csv"], files=self.files(index), totals=[("clip files", len(index))])
