"""DATA_CARD.md beside the output: Hugging Face dataset-card front matter, how the data was made, what each
step dropped, the format's files, and figures under SHARDS_DIR/card/.

The front matter is built with huggingface_hub's `DatasetCardData` and the finished text is parsed back with
`DatasetCard` (a card the Hub would refuse to read fails the build instead). The body comes from
`data_cards/TEMPLATE.md` (`$name` placeholders, string.Template). Provenance is read from the input manifest's
`provenance.json` (every step that made it: the split-videos options, and each step's folder, whose
`failed.jsonl` lists what failed upstream); the caption model and prompt from the manifest's own columns; dedup
from the index. Every statistic and figure is an SQL aggregate over index.parquet (the card's clips) or, for "before
the filters", over the rows the filters saw (`select.Selection.scored`, computed during the selection): the card
holds counts, never the clips. A Compute section that `plan --card` wrote (between the `<!-- plan: compute -->`
markers) is kept when the card is written again.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from string import Template

import numpy as np
import pyarrow as pa

from .. import query, storage
from ..manifest import manifest_files, read_failed, read_provenance
from ..query import ident
from . import plots
from .select import HOURS, SCORE_COLUMNS, category_counts, column_types, hours, score_columns, score_stats
from .where import number

TEMPLATE = Path(__file__).resolve().parents[2] / "data_cards" / "TEMPLATE.md"
SIMILARITY_SAMPLE = 20_000
# the markers around the section `plan --card` writes (plan.py's CARD_START, CARD_END): kept on a rewrite
COMPUTE_START, COMPUTE_END = "<!-- plan: compute -->", "<!-- /plan: compute -->"


def similarity_plot(nearest: np.ndarray, threshold: float) -> bytes:
    """index-clips' similarity_hist.png: the nearest-neighbour similarity of the indexed clips."""
    return plots.similarity(nearest, threshold, among="in the index")


def _table(rows: list[tuple], header: tuple) -> str:
    if not rows:
        return "none"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "n>10M"


def human_size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def _reason(text: str) -> str:
    """A failure's reason without the clip or row it names and details in parentheses: groups alike reasons."""
    text = re.sub(r"^(clip \S+|\d+ clips?|\S+ row \d+ \(clip \S+\)): ", "", text)
    return re.sub(r"\s*\(.*\)\s*$", "", text).strip()


def _folder_of(manifest):
    from ..manifest import manifest_folder

    loc = manifest_folder(manifest)
    return loc if storage.is_remote(loc) else loc.resolve()


def _provenance(manifest) -> tuple[str, list[tuple]]:
    """The shot detector and clip rules (from the split step the manifest's provenance.json names) and the
    failures of every step that made the manifest, by stage and reason."""
    if manifest is None:
        return "not recorded (no manifest path)", []
    steps = read_provenance(manifest)
    folders = [storage.location(s["out"]) for s in steps if s.get("out")] or [_folder_of(manifest)]
    detector = "not recorded (the manifest has no provenance.json naming a split-videos run)"
    split = next((s.get("options") or {} for s in steps if s.get("stage") == "split"), None)
    if split is not None:
        opts = ", ".join(f"{k}={v}" for k, v in sorted((split.get("detector_options") or {}).items()))
        rules = ", ".join(f"{k}={split[k]}" for k in ("min_sec", "max_sec", "trim_frames") if k in split)
        detector = (f"`{split.get('detector')}`" + (f" ({opts})" if opts else "")
                    + (f"; clip rules: {rules}" if rules else ""))
    seen, upstream = set(), Counter()
    for folder in folders:
        for f in read_failed(folder):
            key = (f.get("path"), f.get("stage"), f.get("reason"))
            if key not in seen:  # caption-videos given a folder repeats the split's failures
                seen.add(key)
                upstream[(f.get("stage", "?"), _reason(f.get("reason", "")))] += 1
    return detector, [(stage, why, n) for (stage, why), n in sorted(upstream.items(), key=lambda x: (x[0][0], -x[1]))]


def _scores(con, sel, index: str, card_dir) -> tuple[str, str]:
    """The scores table (range, thresholds used) and one histogram per score with its thresholds drawn: the
    ranges of the rows the filters saw (from the selection), the counts of the card's clips (from the index)."""
    index_types = column_types(con, index)
    scored = sel.scored if sel is not None and sel.scored else score_stats(con, index, score_columns(index_types))
    lines: dict[str, list] = {}
    for step in (sel.steps if sel is not None else []):
        if step.kind != "filtered" or step.column is None:
            continue
        if step.threshold is not None:
            lines.setdefault(step.column, []).append((step.threshold, step.condition))
    if sel is not None:
        for node in sel.where_nodes:
            for col, op, value in node.thresholds():
                lines.setdefault(col, []).append((value, f"{col} {plots_op(op)} {value:g}"))
    rows, figures = [], []
    for col, st in scored.items():
        v = number(ident(col))
        kept = int(query.scalar(con, f"SELECT count({v}) FROM {index}")) if col in index_types else 0
        used = "; ".join(sorted({label for _, label in lines.get(col, [])})) or "none"
        n = st["count"]
        rows.append((col, n, f"{st['min']:.4g}" if n else "-", f"{st['median']:.4g}" if n else "-",
                     f"{st['max']:.4g}" if n else "-", used, kept))
        if n and st["hist"] is not None:
            edges, counts = st["hist"]
            storage.write_bytes(card_dir / f"score_{col}.png", plots.histogram_counts(
                edges, counts, col, lines=sorted(set(lines.get(col, []))),
                title=f"{col}: {n} clips before the filters, {kept} in this dataset"))
            figures.append(f"![{col}](card/score_{col}.png)")
    before = sel.categories if sel is not None else {}
    if before:
        after = category_counts(con, index, "camera_motion") if "camera_motion" in index_types else {}
        storage.write_bytes(card_dir / "camera_motion.png", plots.categories(before, after, "camera motion"))
        figures.append("![camera motion](card/camera_motion.png)")
    table = _table(rows, ("score", "clips with it", "min", "median", "max", "threshold used", "in this dataset"))
    return table, "\n".join(figures)


def plots_op(op: str) -> str:
    return {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}[op]


def _similarity(con, index_dir, index: str, card_dir) -> tuple[str, str, list]:
    """Dedup text, the similarity figure over the card's own clips, and the embedding models."""
    meta_path = storage.location(index_dir) / "index.json" if index_dir is not None else None
    if meta_path is None or not storage.exists(meta_path):
        return "Not deduplicated (--no-dedup).", "", []
    meta = json.loads(storage.read_text(meta_path))
    d = meta["dedup"]
    models = [("visual embedding", meta["visual"].get("model", meta["visual"]["name"]), meta["clips"]),
              ("text embedding", meta["text"]["name"], meta["clips"])]
    text = (f"Clips whose visual embeddings ({meta['visual']['name']}) have cosine similarity >= {d['threshold']}, "
            f"or whose frames are identical (frame hash), form groups ({d['groups']} groups among "
            f"{meta['clips']} indexed clips; pair search: {d['method']}). After the filters, one clip per group "
            f"is kept: {d['keep_rule']}.")
    figure = ""
    nearest = _nearest(con, index_dir, f"SELECT CAST(clip_id AS VARCHAR) AS clip_id FROM {index}")
    if len(nearest) >= 2:
        storage.write_bytes(card_dir / "similarity.png", plots.similarity(nearest, float(d["threshold"])))
        figure = "![nearest-neighbour similarity](card/similarity.png)"
    return text, figure, models


def card_similarities(index_dir, clip_ids) -> np.ndarray:
    """For each clip of the card (found in the index), the cosine similarity of its visual embedding to the
    nearest other clip of the card: the clip set the card counts, not the whole index (a sample of
    SIMILARITY_SAMPLE clips of larger cards, each compared with all)."""
    with query.connect() as con:
        query.arrow(con, "_card_ids", pa.table({"clip_id": pa.array([str(c) for c in clip_ids], pa.string())}))
        return _nearest(con, index_dir, "SELECT clip_id FROM _card_ids")


def _nearest(con, index_dir, ids_sql: str) -> np.ndarray:
    """`card_similarities` for the clip ids a query returns: the index's rows of those clips (each clip once) are
    found by a join; only their vectors are read (the visual index is the dedup's global view, memory-mapped)."""
    from ..dedup.groups import nearest_neighbour_similarity

    folder = storage.location(index_dir)
    vis_path, clips_path = folder / "visual.npy", folder / "clips.parquet"
    if not (storage.exists(vis_path) and storage.exists(clips_path)):
        return np.zeros(0, np.float32)
    src = query.files_sql(con, manifest_files(clips_path), order=True)
    n_ids, = con.execute(f"SELECT count(*) FROM {src}").fetchall()[0]
    rows = np.array([r for r, in con.execute(
        f"SELECT pos FROM (SELECT CAST(clip_id AS VARCHAR) AS clip_id, row_number() OVER (ORDER BY filename, "
        f"file_row_number) - 1 AS pos FROM {src}) QUALIFY row_number() OVER (PARTITION BY clip_id ORDER BY pos) = 1 "
        f"AND clip_id IN ({ids_sql}) ORDER BY pos").fetchall()], np.int64)
    if storage.is_remote(vis_path):
        import io

        vis = np.load(io.BytesIO(storage.read_bytes(vis_path)))
    else:
        vis = np.load(vis_path, mmap_mode="r")
    if len(rows) < 2 or len(vis) != n_ids:
        return np.zeros(0, np.float32)
    return nearest_neighbour_similarity(np.asarray(vis[rows]), sample=min(len(rows), SIMILARITY_SAMPLE))


def _size_on_disk(out_dir, files) -> int:
    """Bytes of the output's files, one listing per folder (no request per file)."""
    out, by_folder = storage.location(out_dir), {}
    for f in files:
        folder, _, name = f.rpartition("/")
        by_folder.setdefault(folder, set()).add(name)
    total = 0
    for folder, names in by_folder.items():
        listed = storage.listing(out / folder if folder else out)
        total += sum(int(listed[n].get("size") or 0) for n in names if n in listed and listed[n].get("type") == "file")
    return total


def keep_compute(old: str | None, text: str) -> str:
    """`text` with the Compute section of the card it replaces (`old`), when that card had one."""
    if not old or COMPUTE_START not in old or COMPUTE_END not in old:
        return text
    block = COMPUTE_START + old.split(COMPUTE_START, 1)[1].split(COMPUTE_END, 1)[0] + COMPUTE_END
    return text.rstrip("\n") + "\n\n" + block + "\n"


def _front_matter(name: str, license: str, n: int, data_files: list, fmt: str) -> str:
    from huggingface_hub import DatasetCardData

    data = DatasetCardData(
        pretty_name=name, license=license, task_categories=["text-to-video"], size_categories=[size_category(n)],
        tags=["video", "captions", "shotcap", fmt],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": list(data_files)}]}])
    return data.to_yaml()


def write_card(out_dir, report, info, manifest=None, index_dir=None, name: str | None = None,
               license: str = "other", template=None):
    """Render DATA_CARD.md and its figures for the build in `report` (`info`: the writer's FormatInfo)."""
    from huggingface_hub import DatasetCard

    out_dir = storage.location(out_dir)
    template = Path(template or TEMPLATE)
    if not template.exists():
        raise FileNotFoundError(f"data card template {template} not found (pass --card-template)")
    sel = report.selection
    name = name or (out_dir.name if storage.is_remote(out_dir) else out_dir.resolve().name)
    card_dir = out_dir / "card"
    with query.connect() as con:
        index = query.files_sql(con, [report.index_path])
        n = int(query.scalar(con, f"SELECT count(*) FROM {index}"))
        figures = plots.distributions(con, index) if n else {}
        for key, png in figures.items():
            storage.write_bytes(card_dir / f"{key}.png", png)
        detector, upstream = _provenance(manifest)
        dedup_text, similarity, models = _similarity(con, index_dir, index, card_dir)
        cols = column_types(con, index)
        captions = [(what, v, c) for col, what in (("caption_model", "caption model"),
                                                   ("prompt_id", "caption prompt (prompt_id)"))
                    if col in cols for v, c in category_counts(con, index, col).items()]
        models = captions + models
        score_table, score_figures = _scores(con, sel, index, card_dir)
        clip_hours = float(query.scalar(con, f"SELECT {HOURS} FROM {index}")) if n else 0.0
        sources = int(query.scalar(con, f"SELECT count(DISTINCT video_sha256) FROM {index}")) if n else 0
    steps = [(k + 1, s.kind, s.condition, s.dropped, s.clips, f"{s.hours:.3f}")
             for k, s in enumerate(sel.steps if sel is not None else [])]
    flags = [(f, c["dropped"], c["kept"]) for f, c in sorted((sel.flags if sel is not None else {}).items())]
    failed = Counter(_reason(f["reason"]) for f in report.failures)
    unfit = Counter(reason for _, reason in report.unfit)
    totals = [("clips", n), ("hours", f"{clip_hours:.3f}"), ("source videos", sources), *info.totals,
              ("size on disk", human_size(_size_on_disk(out_dir, info.files))),
              ("rows in the input manifest", sel.input_rows if sel is not None else n),
              ("clips dropped", sum(report.dropped.values()))]
    opts = report.clip_options
    fields = {
        "name": name, "format": report.format,
        "totals_table": _table(totals, ("", "")),
        "detector": detector, "models_table": _table(models, ("role", "model / id", "clips")),
        "clip_options": (", ".join(f"{k}={v}" for k, v in opts.describe().items() if v) if opts.active()
                         else "none (each clip is its frame range as it is, re-encoded)"),
        "steps_table": _table(steps, ("step", "kind", "condition", "dropped", "clips left", "hours left")),
        "dropped_summary": ", ".join(f"{c} {k}" for k, c in report.dropped.items()) or "none",
        "flags_table": _table(flags, ("flag", "dropped", "kept")),
        "failed_table": _table(sorted(failed.items(), key=lambda x: -x[1]), ("reason", "rows")),
        "unfit_table": _table(sorted(unfit.items(), key=lambda x: -x[1]), ("reason", "clips")),
        "upstream_table": _table(upstream, ("stage", "reason", "sources or clips")),
        "scores_table": score_table, "score_figures": score_figures or "No scores in the manifest.",
        "format_text": info.text, "read_code": info.read,
        "similarity_figure": similarity, "dedup_text": dedup_text,
    }
    body = Template(template.read_text(encoding="utf-8")).safe_substitute(fields)
    text = f"---\n{_front_matter(name, license, n, info.data_files, report.format).strip()}\n---\n\n{body}"
    card = DatasetCard(text)  # parses the front matter back: a malformed card stops here, not on the Hub
    if card.data.pretty_name != name:
        raise RuntimeError("data card front matter did not round-trip")
    path = out_dir / "DATA_CARD.md"
    try:
        old = storage.read_text(path)
    except (OSError, UnicodeDecodeError):
        old = None
    storage.write_text(path, keep_compute(old, text))
    return path


__all__ = ["COMPUTE_END", "COMPUTE_START", "SCORE_COLUMNS", "hours", "keep_compute", "score_columns",
           "similarity_plot", "size_category", "write_card"]
