"""`webvid`: WebVid-10M's CSV, one clip per video: the whole video.

    videoid,contentUrl,duration,page_dir,name
    21179416,https://ak.picdn.net/.../1.mp4,PT00H00M11S,006001_006050,"Aerial shot of ..."

`duration` is ISO 8601 and whole seconds: a local video more than a second shorter than it is a failure (a
truncated download), never a shorter clip passed on silently.
"""

from __future__ import annotations

from .base import BadValue, Importer, Problem, Span, check_csv, csv_rows, iso_duration

REQUIRED = ("videoid", "contentUrl", "duration", "page_dir", "name")


class WebVid(Importer):
    name = "webvid"
    dataset = "webvid"
    columns = REQUIRED
    help = "WebVid CSV: videoid, contentUrl, duration (ISO 8601), page_dir, name (the caption); whole videos"

    def check(self, metadata) -> None:
        check_csv(metadata, "WebVid", REQUIRED)

    def read(self, metadata, work=None):
        for line, r in csv_rows(metadata, "WebVid", REQUIRED):
            where = f"line {line}"
            if "__bad__" in r:
                yield Problem(line, where, f"{r['__bad__']} fields, the header has another number")
                continue
            vid = r["videoid"].strip()
            try:
                duration = iso_duration(r["duration"])
                if duration <= 0:
                    raise BadValue(f"duration {r['duration']!r} is zero")
            except BadValue as e:
                yield Problem(line, where, str(e), source_id=vid)
                continue
            meta = {"meta_source_id": vid, "meta_source_url": r["contentUrl"], "meta_page_dir": r["page_dir"],
                    "meta_duration_sec": duration}
            yield Span(line, where, source_id=vid, start=0.0, end=duration, cut=True, captions=[r["name"]], meta=meta)
