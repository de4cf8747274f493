"""`opensora-csv`: Open-Sora's CSV, one clip file per row, what `build-shards --format opensora-csv` writes.

    path,text,num_frames,height,width,aspect_ratio,fps,resolution[,aes,flow,match,ocr,...]

`path` is absolute or relative to --videos (the CSV's folder when --videos is not given); each file is one clip,
taken whole. Its frames, size and rate are read from the file itself (the CSV's own num_frames, height, width, fps
are Open-Sora's probe of it); the score columns Open-Sora's tools add (aes, flow, match, ocr) and any other
numeric column become meta_* columns.
"""

from __future__ import annotations

from .base import Importer, Problem, Span, check_csv, csv_rows, meta_name, number

REQUIRED = ("path",)
GEOMETRY = {"path", "text", "num_frames", "height", "width", "aspect_ratio", "fps", "resolution"}


class OpenSoraCSV(Importer):
    name = "opensora-csv"
    dataset = "opensora-csv"
    columns = ("path", "text", "num_frames", "height", "width", "aspect_ratio", "fps", "resolution")
    pairing = "path"
    help = "Open-Sora CSV: path, text, num_frames, height, width, aspect_ratio, fps, resolution (+ aes, flow, ...)"

    def check(self, metadata) -> None:
        check_csv(metadata, "Open-Sora CSV", REQUIRED)

    def read(self, metadata, work=None):
        for line, r in csv_rows(metadata, "Open-Sora CSV", REQUIRED):
            where = f"line {line}"
            if "__bad__" in r:
                yield Problem(line, where, f"{r['__bad__']} fields, the header has another number")
                continue
            path = r["path"].strip()
            if not path:
                yield Problem(line, where, "empty path")
                continue
            meta = {}
            for k, v in r.items():
                if k in GEOMETRY:
                    continue
                value = number(v)
                meta[meta_name(k)] = value if value is not None or not v.strip() else v
            text = r.get("text")
            yield Span(line, where, path=path, cut=True, captions=[text] if text and text.strip() else [], meta=meta)
