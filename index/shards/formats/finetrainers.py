"""`finetrainers`: `videos/<key>.mp4` with `prompt.txt` + `videos.txt` (line k of one is the caption of line k of
the other, paths relative to the folder), and `metadata.csv` (`file_name`, `caption`): the two-file layout and
the CSV layout finetrainers reads (`--data_root FOLDER --caption_column prompt.txt --video_column videos.txt`,
or the folder alone for its `videofolder` loader). A caption's line breaks become spaces in `prompt.txt`, one
line per clip. The clip options (--fps, --frames-4k1, --side-multiple) make the clips fit a model family.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ...files import atomic_write_text
from .base import Context, FormatInfo, Writer

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

    def write(self, clips: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        index = self.place_clips(clips.sort_values("key", kind="stable"), ctx, captions=False)
        captions = [one_line(c) for c in index["caption"]]
        atomic_write_text(ctx.out_dir / "prompt.txt", "".join(c + "\n" for c in captions))
        atomic_write_text(ctx.out_dir / "videos.txt", "".join(f + "\n" for f in index["file"]))
        csv = pd.DataFrame({"file_name": index["file"].to_numpy(), "caption": captions})
        atomic_write_text(ctx.out_dir / "metadata.csv", csv.to_csv(index=False))
        return index

    def describe(self, index: pd.DataFrame, out_dir: Path) -> FormatInfo:
        return FormatInfo(
            text="finetrainers' layouts: `videos/` with one mp4 per clip, `prompt.txt` and `videos.txt` (line k "
                 "of each belongs to the same clip, paths relative to this folder), and `metadata.csv` "
                 "(`file_name`, `caption`) for its folder loader.",
            read=READ, data_files=["videos/*.mp4", "metadata.csv"], files=self.files(index),
            totals=[("clip files", len(index))])
