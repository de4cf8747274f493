"""`video2dataset`: the output folder video2dataset writes, one sample per video file.

    OUT/00000/000000000.mp4 .json .txt     output_format "files"
    OUT/00000.tar  (000000000.mp4, .json, .txt inside)     output_format "webdataset"

Each sample is paired through its JSON: `key`, `url`, `status` (a sample that failed to download is a failure with
video2dataset's own message), `caption` or the `.txt` beside it, `clips` (the span it was cut from, in seconds of
the source: when clipping, each sample is one clip, so the file is taken whole and the span kept as
meta_source_start_sec / meta_source_end_sec), and every other scalar field (the metadata columns saved with
`save_additional_columns`, such as Panda-70M's matching_score) as a meta_* column.

Every later stage reads a clip from a file, so the videos inside tars are extracted once into OUT_DIR/videos/
(a re-run finds them there).
"""

from __future__ import annotations

import json
import tarfile

from index import storage

from .base import BadValue, Importer, MetadataError, Problem, Span, meta_name, number

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
KNOWN = {"key", "url", "status", "error_message", "caption", "clips", "clip", "yt_meta_dict", "original_width",
         "original_height"}


def _layout(folder) -> tuple[list, list]:
    """(tar files, sample files) of the folder."""
    tars, files = [], []
    for loc, info in storage.walk_files(folder):
        name = loc.name
        if name.endswith(".tar"):
            tars.append(loc)
        elif not name.endswith(("_stats.json", ".parquet")):
            files.append(loc)
    return tars, files


class Video2Dataset(Importer):
    name = "video2dataset"
    dataset = "video2dataset"
    columns = ("key.json", "key.mp4", "key.txt")
    pairing = "path"
    help = "video2dataset output folder (files or webdataset tars): KEY.mp4 + KEY.json (+ KEY.txt)"

    def check(self, metadata) -> None:
        if not storage.is_dir(storage.location(metadata)):
            raise MetadataError(f"{metadata}: not a video2dataset output folder (give the folder it wrote)")
        tars, files = _layout(metadata)
        if not tars and not any(f.name.endswith(".json") for f in files):
            raise MetadataError(f"{metadata}: not a video2dataset output folder: no NNNNN.tar and no KEY.json "
                                f"samples (expected files KEY.json, KEY.mp4, KEY.txt, or tars of them)")

    def read(self, metadata, work=None):
        tars, files = _layout(metadata)
        row = 0
        for group in _file_samples(files):
            row += 1
            yield _sample(row, group["where"], group)
        for tar in tars:
            for group in _tar_samples(tar, work):
                row += 1
                yield _sample(row, group["where"], group)


def _file_samples(files):
    """{where, json, txt, video} of each KEY of the files layout (sorted listing: a key's files are together)."""
    cur, group = None, {}
    for loc in files:
        stem, ext = loc.name.rsplit(".", 1) if "." in loc.name else (loc.name, "")
        key = (str(loc.parent), stem)
        if key != cur:
            if group.get("json") is not None:
                yield group
            cur, group = key, {"where": f"{loc.parent.name}/{stem}"}
        if ext == "json":
            group["json"] = storage.read_bytes(loc)
        elif ext == "txt":
            group["txt"] = storage.read_bytes(loc)
        elif f".{ext.lower()}" in VIDEO_EXTS:
            group["video"] = str(loc)
    if group.get("json") is not None:
        yield group


def _tar_samples(tar, work):
    """The samples of one webdataset tar, streamed; each video written to WORK/TAR_STEM/KEY.EXT (once)."""
    if work is None:
        raise MetadataError("video2dataset tars need an output folder to extract their videos to")
    folder = storage.location(work) / tar.name[:-len(".tar")]
    have = storage.listing(folder)
    cur, group = None, {}
    with storage.open_read(tar) as raw:
        try:
            archive = tarfile.open(fileobj=raw, mode="r|")
        except tarfile.TarError as e:
            raise MetadataError(f"{tar}: not a tar file ({e})") from None
        with archive:
            for m in archive:
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                stem, _, ext = base.partition(".")
                if stem != cur:
                    if group.get("json") is not None:
                        yield group
                    cur, group = stem, {"where": f"{tar.name}/{stem}"}
                data_ext = f".{ext.lower()}"
                if ext == "json":
                    group["json"] = archive.extractfile(m).read()
                elif ext == "txt":
                    group["txt"] = archive.extractfile(m).read()
                elif data_ext in VIDEO_EXTS:
                    dst = folder / f"{stem}{data_ext}"
                    if have.get(dst.name, {}).get("size") != m.size:
                        storage.makedirs(folder)
                        storage.write_bytes(dst, archive.extractfile(m).read())
                    group["video"] = str(dst) if storage.is_remote(dst) else str(dst.absolute())
    if group.get("json") is not None:
        yield group


def _sample(row: int, where: str, group: dict) -> Span | Problem:
    try:
        meta_in = json.loads(group["json"])
        if not isinstance(meta_in, dict):
            raise ValueError
    except ValueError:
        return Problem(row, where, "its .json is not a JSON object")
    key = str(meta_in.get("key") or where.rsplit("/", 1)[-1])
    status = meta_in.get("status")
    if status not in (None, "success"):
        return Problem(row, where, f"video2dataset did not download it ({status}: "
                                   f"{' '.join(str(meta_in.get('error_message') or '').split())[:160]})", source_id=key)
    if not group.get("video"):
        return Problem(row, where, "no video file beside its .json", source_id=key)
    caption = meta_in.get("caption")
    if not isinstance(caption, str) and group.get("txt") is not None:
        caption = group["txt"].decode("utf-8", errors="replace").strip()
    meta = {"meta_source_id": key, "meta_source_url": str(meta_in.get("url") or "")}
    start = end = None
    clips = meta_in.get("clips") or ([meta_in["clip"]] if meta_in.get("clip") else None)
    try:
        if clips:
            pair = clips[0]
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise BadValue(f"clips is {str(clips)[:40]!r}, not [[start, end]]")
            start, end = float(pair[0]), float(pair[1])
            if not end > start:
                raise BadValue(f"clip span end {end:.3f} s is not after start {start:.3f} s")
            meta.update(meta_source_start_sec=start, meta_source_end_sec=end)
    except (BadValue, TypeError, ValueError) as e:
        return Problem(row, where, str(e) if isinstance(e, BadValue) else f"clips is not [[start, end]]", source_id=key)
    for k, v in meta_in.items():
        if k in KNOWN or isinstance(v, (dict, list)) or v is None:
            continue
        meta[meta_name(k)] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else \
            (v if isinstance(v, bool) else (number(v) if number(v) is not None else str(v)))
    return Span(row, where, source_id=key, path=group["video"], start=start, end=end, cut=True,
                captions=[caption] if isinstance(caption, str) and caption.strip() else [], meta=meta)
