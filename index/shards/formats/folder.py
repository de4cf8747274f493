"""`folder`: each clip as `videos/<key>.mp4` with its caption in `videos/<key>.txt`, and `metadata.jsonl`.

The file pairs are the layout diffusion-pipe, musubi-tuner, ai-toolkit and finetrainers' file-pair loader read.
`metadata.jsonl` has one line per clip: `file_name` (relative to the folder), `caption` and every other column
of the manifest (scores, flags, source, frame range), which is what the Hugging Face `datasets` folder builders
read: `load_dataset("videofolder", data_dir=FOLDER)` gives one row per clip with its video and columns.
"""

from __future__ import annotations

import json

from .base import Context, FormatInfo, TextOut, Writer, json_value

READ = """```python
from datasets import load_dataset, Video
ds = load_dataset("videofolder", data_dir="path/to/this/folder", split="train")
ds = ds.cast_column("video", Video(decode=False))  # {"path": ...}; decoding needs torchcodec
```"""


def metadata_line(row: dict, ctx: Context) -> str:
    rec = {"file_name": row["file"], "caption": row["caption"], **ctx.record(row)}
    return json.dumps({k: json_value(v) for k, v in rec.items()}, ensure_ascii=False) + "\n"


class FolderWriter(Writer):
    name = "folder"
    help = "videos/<key>.mp4 + <key>.txt caption pairs and metadata.jsonl (datasets' videofolder)"

    def fixed_files(self) -> list[str]:
        return ["metadata.jsonl"]

    def write(self, ctx: Context):
        with TextOut(ctx.out_dir / "metadata.jsonl") as meta:
            for batch in ctx.rows("key"):
                index = self.place_clips(ctx, batch, captions=True)
                for row in index.to_pylist():
                    meta.write(metadata_line(row, ctx))
                yield index

    def files(self, con, index: str) -> list[str]:
        return self.files_with_captions(con, index)

    def describe(self, clips: int, files: list, out_dir) -> FormatInfo:
        return FormatInfo(
            text="One mp4 per clip in `videos/`, its caption beside it in a `.txt` file of the same name, and "
                 "`metadata.jsonl` (`file_name`, `caption` and every manifest column, scores included) for the "
                 "Hugging Face `datasets` folder builder.",
            read=READ, data_files=["videos/*.mp4", "metadata.jsonl"], files=files, totals=[("clip files", clips)])
