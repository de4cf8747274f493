"""`internvid`: InternVid's JSON lines, one clip per line (a video's clips on several lines, in any order).

    {"YoutubeID": "--0YTiHTwoE", "Start_timestamp": "00:00:10.477", "End_timestamp": "00:00:14.347",
     "Caption": "a man ...", "Aesthetic_Score": 4.31, "UMT_Score": 0.41}
"""

from __future__ import annotations

from .base import (BadValue, Importer, Problem, Span, check_jsonl, hms, jsonl_rows, meta_name, number,
                   span_times)

REQUIRED = ("YoutubeID", "Start_timestamp", "End_timestamp", "Caption")
KNOWN = {"YoutubeID", "Start_timestamp", "End_timestamp", "Caption"}


class InternVid(Importer):
    name = "internvid"
    dataset = "internvid"
    columns = REQUIRED
    help = "InternVid JSONL: YoutubeID, Start_timestamp, End_timestamp (HH:MM:SS.mmm), Caption, scores"

    def check(self, metadata) -> None:
        check_jsonl(metadata, "InternVid", REQUIRED)

    def read(self, metadata, work=None):
        for line, obj in jsonl_rows(metadata, "InternVid", REQUIRED):
            where = f"line {line}"
            if obj is None:
                yield Problem(line, where, "not a JSON object")
                continue
            vid = str(obj.get("YoutubeID") or "").strip()
            try:
                missing = [k for k in REQUIRED if k not in obj]
                if missing or not vid:
                    raise BadValue(f"no {', '.join(missing) or 'YoutubeID'}")
                start, end = span_times(hms(obj["Start_timestamp"]), hms(obj["End_timestamp"]))
            except BadValue as e:
                yield Problem(line, where, str(e), source_id=vid)
                continue
            meta = {"meta_source_id": vid, "meta_source_url": f"https://www.youtube.com/watch?v={vid}"}
            for k, v in obj.items():  # Aesthetic_Score, UMT_Score, and whatever a release adds
                if k not in KNOWN:
                    meta[meta_name(k)] = number(v) if isinstance(v, (int, float)) or number(v) is not None else str(v)
            yield Span(line, where, source_id=vid, start=start, end=end, captions=[str(obj["Caption"])], meta=meta)
