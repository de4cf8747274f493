"""`folder`: each clip as `videos/<key>.mp4` with its caption in `videos/<key>.txt`, and `metadata.jsonl`.

The file pairs are the layout diffusion-pipe, musubi-tuner, ai-toolkit and finetrainers' file-pair loader read.
`metadata.jsonl` has one line per clip: `file_name` (relative to the folder), `caption` and every other column
of the manifest (scores, flags, source, frame range), which is what the Hugging Face `datasets` folder builders
read: `load_dataset("videofolder", data_dir=FOLDER)` gives one row per clip with its video and columns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ...files import atomic_write_text
from .base import Context, FormatInfo, Writer, json_value

READ = """```python
from datasets import load_dataset, Video
ds = load_dataset("videofolder", data_dir="path/to/this/folder", split="train")
ds = ds.cast_column("video", Video(decode=False))  # {"path": ...}; decoding needs torchcodec
```"""


def metadata_lines(index: pd.DataFrame, ctx: Context) -> str:
    lines = []
    for row in index.to_dict("records"):
        rec = {"file_name": row["file"], "caption": row["caption"], **ctx.record(row)}
        lines.append(json.dumps({k: json_value(v) for k, v in rec.items()}, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


class FolderWriter(Writer):
    name = "folder"
    help = "videos/<key>.mp4 + <key>.txt caption pairs and metadata.jsonl (datasets' videofolder)"

    def fixed_files(self) -> list[str]:
        return ["metadata.jsonl"]

    def write(self, clips: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        index = self.place_clips(clips.sort_values("key", kind="stable"), ctx, captions=True)
        atomic_write_text(ctx.out_dir / "metadata.jsonl", metadata_lines(index, ctx))
        return index

    def files(self, index: pd.DataFrame) -> list[str]:
        return self.files_with_captions(index)

    def describe(self, index: pd.DataFrame, out_dir: Path) -> FormatInfo:
        return FormatInfo(
            text="One mp4 per clip in `videos/`, its caption beside it in a `.txt` file of the same name, and "
                 "`metadata.jsonl` (`file_name`, `caption` and every manifest column, scores included) for the "
                 "Hugging Face `datasets` folder builder.",
            read=READ, data_files=["videos/*.mp4", "metadata.jsonl"], files=self.files(index),
            totals=[("clip files", len(index))])
