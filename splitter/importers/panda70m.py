"""`panda70m`: Panda-70M's CSV, one row per source video, its clips in lists.

    videoID,url,timestamp,caption,matching_score[,desirable_filtering,shot_boundary_detection]
    --QTzQ6pmsU,https://www.youtube.com/watch?v=--QTzQ6pmsU,"[['0:00:00.000', '0:00:05.005'], ...]","['a man ...', ...]","[0.43, ...]"

`timestamp` is a list of [start, end] pairs as 'H:MM:SS.mmm'; `caption` and `matching_score` (and the optional
lists) hold one entry per pair. A row whose lists differ in length is one failure (which clip a caption belongs to
is unknown), as is a row with a malformed timestamp: nothing is shifted onto another clip.
"""

from __future__ import annotations

from .base import BadValue, Importer, Problem, Span, check_csv, csv_rows, hms, literal_list, number, span_times

REQUIRED = ("videoID", "url", "timestamp", "caption", "matching_score")
OPTIONAL = ("desirable_filtering", "shot_boundary_detection")


class Panda70M(Importer):
    name = "panda70m"
    dataset = "panda70m"
    columns = REQUIRED
    help = "Panda-70M CSV: videoID, url, timestamp [[start, end], ...], caption [...], matching_score [...]"

    def check(self, metadata) -> None:
        check_csv(metadata, "Panda-70M", REQUIRED)

    def read(self, metadata, work=None):
        for line, r in csv_rows(metadata, "Panda-70M", REQUIRED):
            where = f"line {line}"
            if "__bad__" in r:
                yield Problem(line, where, f"{r['__bad__']} fields, the header has another number")
                continue
            vid = r["videoID"].strip()
            try:
                stamps = literal_list(r["timestamp"], "timestamp", plain=True)
                captions = literal_list(r["caption"], "caption")
                scores = literal_list(r["matching_score"], "matching_score")
                extra = {c: literal_list(r[c], c) for c in OPTIONAL if r.get(c, "").strip()}
                lengths = {"timestamp": len(stamps), "caption": len(captions), "matching_score": len(scores),
                           **{c: len(v) for c, v in extra.items()}}
                if len(set(lengths.values())) > 1:
                    raise BadValue("lists of unequal length (" + ", ".join(f"{k} {v}" for k, v in lengths.items())
                                   + "): which caption belongs to which clip is unknown")
                if not stamps:
                    raise BadValue("no clips (timestamp is an empty list)")
                spans = []
                for k, pair in enumerate(stamps):
                    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                        raise BadValue(f"timestamp {k} is {str(pair)[:40]!r}, not a [start, end] pair")
                    try:
                        spans.append(span_times(hms(pair[0]), hms(pair[1])))
                    except BadValue as e:
                        raise BadValue(f"timestamp {k}: {e}") from None
            except BadValue as e:
                yield Problem(line, where, str(e), source_id=vid)
                continue
            for k, (start, end) in enumerate(spans):
                meta = {"meta_source_id": vid, "meta_source_url": r["url"], "meta_clip_index": k,
                        "meta_matching_score": number(scores[k])}
                if "desirable_filtering" in extra:
                    meta["meta_desirable_filtering"] = str(extra["desirable_filtering"][k])
                if "shot_boundary_detection" in extra:
                    meta["meta_shot_boundary_detection"] = str(extra["shot_boundary_detection"][k])
                cap = captions[k]
                yield Span(line, where, clip=k, source_id=vid, start=start, end=end,
                           captions=[str(c) for c in (cap if isinstance(cap, list) else [cap])], meta=meta)
