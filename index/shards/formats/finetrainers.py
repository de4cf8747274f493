"""`finetrainers`: `videos/<key>.mp4` with `prompt.txt` + `videos.txt` (line k of one is the caption of line k of
the other, paths relative to the folder), and `metadata.csv` (`file_name`, `caption`): the two-file layout and
the CSV layout finetrainers reads (`--data_root FOLDER --caption_column prompt.txt --video_column videos.txt`,
or the folder alone for its `videofolder` loader). A caption's line breaks become spaces in `prompt.txt`, one
line per clip. The clip options (--fps, --frames-4k1, --side-multiple) make the clips fit a model family.
"""

from __future__ import annotations

import pandas as pd

from .base import Context, FormatInfo, TextOut, Writer

READ = """```bash
# two-file layout
accelerate launch train.py ... --data_root path/to/this/folder --caption_column prompt.txt --video_column videos.txt
```
```python
from datasets import load_dataset  # the CSV layout: metadata.csv (file_name, caption)
ds = load_dataset("videofolder", data_dir="path/to/this/folder", split="train")
```"""


def one_line(text: str) -> str:
    return " ".join(str(text).split())


class FinetrainersWriter(Writer):
    name = "finetrainers"
    help = "videos/ + prompt.txt + videos.txt (and metadata.csv) for finetrainers"

    def fixed_files(self) -> list[str]:
        return ["prompt.txt", "videos.txt", "metadata.csv"]

    def write(self, ctx: Context):
        with TextOut(ctx.out_dir / "prompt.txt") as prompts, TextOut(ctx.out_dir / "videos.txt") as videos, \
                TextOut(ctx.out_dir / "metadata.csv") as csv:
            first = True
            for batch in ctx.rows("key"):
                index = self.place_clips(ctx, batch, captions=False)
                captions = [one_line(c) for c in index.column("caption").to_pylist()]
                files = index.column("file").to_pylist()
                prompts.write("".join(c + "\n" for c in captions))
                videos.write("".join(f + "\n" for f in files))
                csv.write(pd.DataFrame({"file_name": files, "caption": captions}).to_csv(index=False, header=first))
                first = False
                yield index
            if first:  # no clip: the CSV still has its header
                csv.write(pd.DataFrame({"file_name": [], "caption": []}).to_csv(index=False))

    def describe(self, clips: int, files: list, out_dir) -> FormatInfo:
        return FormatInfo(
            text="finetrainers' layouts: `videos/` with one mp4 per clip, `prompt.txt` and `videos.txt` (line k "
                 "of each belongs to the same clip, paths relative to this folder), and `metadata.csv` "
                 "(`file_name`, `caption`) for its folder loader.",
            read=READ, data_files=["videos/*.mp4", "metadata.csv"], files=files, totals=[("clip files", clips)])
