"""`opensora-csv`: the clips as `clips/<key>.mp4` and Open-Sora's `opensora.csv`
(`path,text,num_frames,height,width,aspect_ratio,fps,resolution`; `path` absolute, `aspect_ratio` height/width
as Open-Sora computes it, `resolution` height*width), the values those of the written clip files."""

from __future__ import annotations

import pandas as pd

from .base import Context, FormatInfo, Writer, TextOut

COLUMNS = ("path", "text", "num_frames", "height", "width", "aspect_ratio", "fps", "resolution")


class OpenSoraCSVWriter(Writer):
    name = "opensora-csv"
    help = "clips/<key>.mp4 + opensora.csv (Open-Sora's columns)"
    media = "clips"

    def fixed_files(self) -> list[str]:
        return ["opensora.csv"]

    def write(self, ctx: Context):
        with TextOut(ctx.out_dir / "opensora.csv") as out:
            first = True
            for batch in ctx.rows("key || '.mp4'"):  # the order of `path`
                index = self.place_clips(ctx, batch, captions=False)
                h = index.column("clip_height").to_pandas().astype(int)
                w = index.column("clip_width").to_pandas().astype(int)
                csv = pd.DataFrame({
                    "path": [ctx.shown(f) for f in index.column("file").to_pylist()],
                    "text": [str(c) for c in index.column("caption").to_pylist()],
                    "num_frames": index.column("clip_num_frames").to_pandas().astype(int).to_numpy(),
                    "height": h.to_numpy(), "width": w.to_numpy(),
                    "aspect_ratio": (h / w).round(6).to_numpy(),
                    "fps": index.column("clip_fps").to_pandas().astype(float).to_numpy(),
                    "resolution": (h * w).to_numpy(),
                })
                out.write(csv.to_csv(index=False, header=first))
                first = False
                yield index
            if first:
                out.write(",".join(COLUMNS) + "\n")

    def describe(self, clips: int, files: list, out_dir) -> FormatInfo:
        return FormatInfo(
            text="`opensora.csv` with Open-Sora's columns (`path,text,num_frames,height,width,aspect_ratio,fps,"
                 "resolution`; `path` is absolute, `aspect_ratio` is height/width) and the clip files under "
                 "`clips/`.",
            read="```python\nimport pandas as pd\ndf = pd.read_csv(\"path/to/this/folder/opensora.csv\")\n```",
            data_files=["opensora.csv"], files=files, totals=[("clip files", clips)])
