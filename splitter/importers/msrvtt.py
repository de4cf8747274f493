"""`msrvtt`: MSR-VTT's JSON (train_val_videodatainfo.json, test_videodatainfo.json), 20 captions per video.

    {"videos": [{"video_id": "video0", "url": "...", "start time": 137.72, "end time": 149.44,
                 "split": "train", "category": 9, "id": 0}, ...],
     "sentences": [{"video_id": "video0", "caption": "a car ...", "sen_id": 0}, ...]}

`start time` and `end time` are seconds in the YouTube video. The release's own videos (TrainValVideo/video0.mp4)
are already cut to that span: a local video as long as the span (within a second) and shorter than its end is
taken whole; a longer one (the full YouTube video) is cut at the span. Every caption is kept (`captions`).

The file is one JSON document (about 40 MB for the 10,000 videos), so it is read at once.
"""

from __future__ import annotations

import json

from index import storage

from .base import BadValue, Importer, MetadataError, Problem, Span, seconds, span_times

REQUIRED = ("videos", "sentences")
VIDEO_KEYS = ("video_id", "start time", "end time")


def _load(metadata) -> dict:
    try:
        doc = json.loads(storage.read_bytes(storage.location(metadata)))
    except ValueError as e:
        raise MetadataError(f"{metadata}: not a JSON file ({str(e)[:80]}); MSR-VTT metadata is the JSON with "
                            f"'videos' and 'sentences'") from None
    if not isinstance(doc, dict) or any(k not in doc for k in REQUIRED):
        found = ", ".join(list(doc)[:12]) if isinstance(doc, dict) else type(doc).__name__
        raise MetadataError(f"{metadata}: not MSR-VTT metadata: expected keys videos ({', '.join(VIDEO_KEYS)}, "
                            f"split) and sentences (video_id, caption); found: {found}")
    if not isinstance(doc["videos"], list) or not isinstance(doc["sentences"], list):
        raise MetadataError(f"{metadata}: not MSR-VTT metadata: 'videos' and 'sentences' must be lists")
    return doc


class MSRVTT(Importer):
    name = "msrvtt"
    dataset = "msrvtt"
    columns = REQUIRED
    help = "MSR-VTT JSON: videos (video_id, start time, end time, split) and sentences (20 captions per video)"

    def check(self, metadata) -> None:
        _load(metadata)

    def read(self, metadata, work=None):
        doc = _load(metadata)
        captions: dict[str, list] = {}
        for s in sorted((s for s in doc["sentences"] if isinstance(s, dict)),
                        key=lambda s: (str(s.get("video_id")), s.get("sen_id") if isinstance(s.get("sen_id"), int) else 0)):
            if isinstance(s.get("caption"), str) and s["caption"].strip():
                captions.setdefault(str(s.get("video_id")), []).append(s["caption"].strip())
        for n, v in enumerate(doc["videos"]):
            where = f"videos[{n}]"
            vid = str(v.get("video_id", "")).strip() if isinstance(v, dict) else ""
            try:
                if not isinstance(v, dict):
                    raise BadValue("not a JSON object")
                missing = [k for k in VIDEO_KEYS if k not in v]
                if missing:
                    raise BadValue(f"no {', '.join(missing)}")
                start, end = span_times(seconds(v["start time"], "start time"), seconds(v["end time"], "end time"))
                if vid not in captions:
                    raise BadValue(f"no sentence for {vid}")
            except BadValue as e:
                yield Problem(n, f"{where} ({vid})" if vid else where, str(e), source_id=vid)
                continue
            meta = {"meta_source_id": vid, "meta_source_url": str(v.get("url", "")), "meta_split": str(v.get("split", "")),
                    "meta_category": int(v["category"]) if isinstance(v.get("category"), int) else None,
                    "meta_source_start_sec": start, "meta_source_end_sec": end}
            yield Span(n, f"{where} ({vid})", source_id=vid, start=start, end=end, cut=None,
                       captions=captions[vid], meta=meta)
