"""DATA_CARD.md beside the output: Hugging Face dataset-card front matter, how the data was made, what each
step dropped, the format's files, and figures under SHARDS_DIR/card/.

The front matter is built with huggingface_hub's `DatasetCardData` and the finished text is parsed back with
`DatasetCard` (a card the Hub would refuse to read fails the build instead). The body comes from
`data_cards/TEMPLATE.md` (`$name` placeholders, string.Template). Provenance is read from the input manifest's
`provenance.json` (every step that made it: the split-videos options, and each step's folder, whose
`failed.jsonl` lists what failed upstream); the caption model and prompt from the manifest's own columns; dedup
from the index.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd

from ..files import atomic_write_bytes, atomic_write_text
from ..manifest import read_failed, read_provenance
from . import plots
from .select import hours

TEMPLATE = Path(__file__).resolve().parents[2] / "data_cards" / "TEMPLATE.md"
# the scorer's columns (score-clips); any numeric `score_*` column is a score too
SIMILARITY_SAMPLE = 20_000
SCORE_COLUMNS = ("aesthetic", "motion", "motion_max", "sharpness", "brightness", "black_frac", "text_area", "bpp",
                 "text_match", "nsfw")


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


def score_columns(df: pd.DataFrame) -> list[str]:
    cols = [c for c in df.columns if c in SCORE_COLUMNS or str(c).startswith("score_")]
    return [c for c in cols if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]


def _provenance(manifest) -> tuple[str, list[tuple]]:
    """The shot detector and clip rules (from the split step the manifest's provenance.json names) and the
    failures of every step that made the manifest, by stage and reason."""
    if manifest is None:
        return "not recorded (no manifest path)", []
    steps = read_provenance(manifest)
    folders = [Path(s["out"]) for s in steps if s.get("out")] or [Path(manifest).resolve().parent]
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


def _scores(sel, index: pd.DataFrame, card_dir: Path) -> tuple[str, str]:
    """The scores table (range, thresholds used) and one histogram per score with its thresholds drawn."""
    scored = sel.scored if sel is not None and sel.scored is not None else index
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
    for col in score_columns(scored):
        v = pd.to_numeric(scored[col], errors="coerce").dropna()
        kept = pd.to_numeric(index[col], errors="coerce").dropna() if col in index else v.iloc[:0]
        used = "; ".join(sorted({label for _, label in lines.get(col, [])})) or "none"
        rows.append((col, len(v), f"{v.min():.4g}" if len(v) else "-", f"{v.median():.4g}" if len(v) else "-",
                     f"{v.max():.4g}" if len(v) else "-", used, len(kept)))
        if len(v):
            atomic_write_bytes(card_dir / f"score_{col}.png", plots.histogram(
                v, col, lines=sorted(set(lines.get(col, []))),
                title=f"{col}: {len(v)} clips before the filters, {len(kept)} in this dataset"))
            figures.append(f"![{col}](card/score_{col}.png)")
    if "camera_motion" in scored and scored["camera_motion"].notna().any():
        atomic_write_bytes(card_dir / "camera_motion.png", plots.categories(
            scored["camera_motion"], index["camera_motion"] if "camera_motion" in index else pd.Series(dtype=str),
            "camera motion"))
        figures.append("![camera motion](card/camera_motion.png)")
    table = _table(rows, ("score", "clips with it", "min", "median", "max", "threshold used", "in this dataset"))
    return table, "\n".join(figures)


def plots_op(op: str) -> str:
    return {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}[op]


def _similarity(index_dir, index: pd.DataFrame, card_dir: Path) -> tuple[str, str, list]:
    """Dedup text, the similarity figure over the card's own clips, and the embedding models."""
    meta_path = Path(index_dir) / "index.json" if index_dir is not None else None
    if meta_path is None or not meta_path.exists():
        return "Not deduplicated (--no-dedup).", "", []
    meta = json.loads(meta_path.read_text())
    d = meta["dedup"]
    models = [("visual embedding", meta["visual"].get("model", meta["visual"]["name"]), meta["clips"]),
              ("text embedding", meta["text"]["name"], meta["clips"])]
    text = (f"Clips whose visual embeddings ({meta['visual']['name']}) have cosine similarity >= {d['threshold']}, "
            f"or whose frames are identical (frame hash), form groups ({d['groups']} groups among "
            f"{meta['clips']} indexed clips; pair search: {d['method']}). After the filters, one clip per group "
            f"is kept: {d['keep_rule']}.")
    figure = ""
    nearest = card_similarities(index_dir, index["clip_id"] if len(index) else [])
    if len(nearest) >= 2:
        atomic_write_bytes(card_dir / "similarity.png", plots.similarity(nearest, float(d["threshold"])))
        figure = "![nearest-neighbour similarity](card/similarity.png)"
    return text, figure, models


def card_similarities(index_dir, clip_ids) -> np.ndarray:
    """For each clip of the card (found in the index), the cosine similarity of its visual embedding to the
    nearest other clip of the card: the clip set the card counts, not the whole index (a sample of
    SIMILARITY_SAMPLE clips of larger cards, each compared with all)."""
    from ..dedup.groups import nearest_neighbour_similarity

    vis_path, clips_path = Path(index_dir) / "visual.npy", Path(index_dir) / "clips.parquet"
    if not (vis_path.exists() and clips_path.exists()):
        return np.zeros(0, np.float32)
    ids = pd.read_parquet(clips_path, columns=["clip_id"])["clip_id"].astype(str)
    rows = np.flatnonzero(ids.isin(set(map(str, clip_ids))).to_numpy() & ~ids.duplicated().to_numpy())
    vis = np.load(vis_path, mmap_mode="r")
    if len(rows) < 2 or len(vis) != len(ids):
        return np.zeros(0, np.float32)
    return nearest_neighbour_similarity(np.asarray(vis[rows]), sample=min(len(rows), SIMILARITY_SAMPLE))


def _front_matter(name: str, license: str, n: int, data_files: list, fmt: str) -> str:
    from huggingface_hub import DatasetCardData

    data = DatasetCardData(
        pretty_name=name, license=license, task_categories=["text-to-video"], size_categories=[size_category(n)],
        tags=["video", "captions", "shotcap", fmt],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": list(data_files)}]}])
    return data.to_yaml()


def write_card(out_dir, report, info, manifest=None, index_dir=None, name: str | None = None,
               license: str = "other", template=None) -> Path:
    """Render DATA_CARD.md and its figures for the build in `report` (`info`: the writer's FormatInfo)."""
    from huggingface_hub import DatasetCard

    out_dir = Path(out_dir)
    template = Path(template or TEMPLATE)
    if not template.exists():
        raise FileNotFoundError(f"data card template {template} not found (pass --card-template)")
    index = report.index if report.index is not None else pd.DataFrame()
    sel = report.selection
    name = name or out_dir.resolve().name
    card_dir = out_dir / "card"
    figures = plots.distributions(index) if len(index) else {}
    for key, png in figures.items():
        atomic_write_bytes(card_dir / f"{key}.png", png)
    detector, upstream = _provenance(manifest)
    dedup_text, similarity, models = _similarity(index_dir, index, card_dir)
    captions = [(what, v, n) for col, what in (("caption_model", "caption model"), ("prompt_id", "caption prompt "
                                                                                               "(prompt_id)"))
                if col in index for v, n in index[col].dropna().astype(str).value_counts().items()]
    models = captions + models
    score_table, score_figures = _scores(sel, index, card_dir)
    steps = [(k + 1, s.kind, s.condition, s.dropped, s.clips, f"{s.hours:.3f}")
             for k, s in enumerate(sel.steps if sel is not None else [])]
    flags = [(f, c["dropped"], c["kept"]) for f, c in sorted((sel.flags if sel is not None else {}).items())]
    failed = Counter(_reason(f["reason"]) for f in report.failures)
    unfit = Counter(reason for _, reason in report.unfit)
    size = sum((out_dir / f).stat().st_size for f in info.files if (out_dir / f).is_file())
    totals = [("clips", len(index)), ("hours", f"{report.hours:.3f}"),
              ("source videos", index["video_sha256"].nunique() if len(index) else 0), *info.totals,
              ("size on disk", human_size(size)),
              ("rows in the input manifest", sel.input_rows if sel is not None else len(index)),
              ("clips dropped", sum(report.dropped.values()))]
    opts = report.clip_options
    fields = {
        "name": name, "format": report.format,
        "totals_table": _table(totals, ("", "")),
        "detector": detector, "models_table": _table(models, ("role", "model / id", "clips")),
        "clip_options": (", ".join(f"{k}={v}" for k, v in opts.describe().items() if v) if opts.active()
                         else "none (each clip is its frame range as it is, re-encoded)"),
        "steps_table": _table(steps, ("step", "kind", "condition", "dropped", "clips left", "hours left")),
        "dropped_summary": ", ".join(f"{n} {k}" for k, n in report.dropped.items()) or "none",
        "flags_table": _table(flags, ("flag", "dropped", "kept")),
        "failed_table": _table(sorted(failed.items(), key=lambda x: -x[1]), ("reason", "rows")),
        "unfit_table": _table(sorted(unfit.items(), key=lambda x: -x[1]), ("reason", "clips")),
        "upstream_table": _table(upstream, ("stage", "reason", "sources or clips")),
        "scores_table": score_table, "score_figures": score_figures or "No scores in the manifest.",
        "format_text": info.text, "read_code": info.read,
        "similarity_figure": similarity, "dedup_text": dedup_text,
    }
    body = Template(template.read_text(encoding="utf-8")).safe_substitute(fields)
    text = f"---\n{_front_matter(name, license, len(index), info.data_files, report.format).strip()}\n---\n\n{body}"
    card = DatasetCard(text)  # parses the front matter back: a malformed card stops here, not on the Hub
    if card.data.pretty_name != name:
        raise RuntimeError("data card front matter did not round-trip")
    return atomic_write_text(out_dir / "DATA_CARD.md", text)


__all__ = ["SCORE_COLUMNS", "hours", "score_columns", "similarity_plot", "size_category", "write_card"]
