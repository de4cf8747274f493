"""DATA_CARD.md beside the shards: Hugging Face dataset-card front matter, totals, plots, models and prompts.

The text comes from `data_cards/TEMPLATE.md` (`$name` placeholders, string.Template); the plots are PNGs
under SHARDS_DIR/card/ drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd

from ..files import atomic_write_bytes, atomic_write_text
from ..manifest import read_failed

TEMPLATE = Path(__file__).resolve().parents[2] / "data_cards" / "TEMPLATE.md"
STOPWORDS = set("""a an the and or of in on at to with from by for is are was were be been it its this that
these those as into over under while his her their there here then than through up down out off one two
video clip shows scene camera frame""".split())


def _figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _figure().close(fig)
    return buf.getvalue()


def similarity_plot(nearest: np.ndarray, threshold: float) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(nearest, bins=np.linspace(-1, 1, 81), color="#4c72b0")
    ax.axvline(threshold, color="#c44e52", ls="--", label=f"threshold {threshold:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("cosine similarity to the nearest other clip")
    ax.set_ylabel("clips")
    ax.legend()
    return _png(fig)


def _durations(df: pd.DataFrame) -> pd.Series:
    """Seconds per clip from its PTS range (num_frames / fps is off for variable-frame-rate sources)."""
    return (df["end_sec"].astype(float) - df["start_sec"].astype(float)).clip(lower=0).round(6)


def _plots(df: pd.DataFrame) -> dict[str, bytes]:
    plt = _figure()
    out = {}
    dur = _durations(df)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(dur, bins=30, color="#4c72b0")
    ax.set_xlabel("clip duration (s)")
    ax.set_ylabel("clips")
    out["duration"] = _png(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    res = (df["width"].astype(str) + "x" + df["height"].astype(str)).value_counts().head(12)
    a1.barh(res.index[::-1], res.to_numpy()[::-1], color="#55a868")
    a1.set_xlabel("clips")
    a1.set_title("resolution")
    from ..record import simplify_ratio
    ar = pd.Series([simplify_ratio(w, h) for w, h in zip(df["width"], df["height"])]).value_counts().head(10)
    a2.bar(ar.index, ar.to_numpy(), color="#8172b2")
    a2.set_title("aspect ratio (w:h)")
    out["resolution"] = _png(fig)

    captions = df["caption"].fillna("").astype(str) if "caption" in df else pd.Series([], dtype=str)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(captions.str.split().str.len(), bins=30, color="#dd8452")
    ax.set_xlabel("caption length (words)")
    ax.set_ylabel("clips")
    out["caption_length"] = _png(fig)

    words = Counter(w for c in captions for w in re.findall(r"[a-z][a-z'-]+", c.lower()) if w not in STOPWORDS)
    top = words.most_common(20)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if top:
        ax.barh([w for w, _ in top][::-1], [n for _, n in top][::-1], color="#64b5cd")
    ax.set_xlabel("occurrences")
    ax.set_title("most frequent caption words")
    out["words"] = _png(fig)
    return out


def _table(rows: list[tuple], header: tuple) -> str:
    if not rows:
        return "none"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "n>10M"


def _dropped(report, out_dir: Path) -> list[tuple]:
    reasons = Counter()
    for f in read_failed(out_dir):
        reason = re.sub(r"^clip \S+: ", "", f["reason"])
        reasons[re.sub(r"\(.*\)$", "", reason).strip()] += 1
    rows = [(why, n) for why, n in sorted(reasons.items(), key=lambda x: -x[1])]
    return rows + [(why, n) for why, n in report.dropped.items()]


def write_card(out_dir, manifest: pd.DataFrame, report, index_dir=None, name: str | None = None,
               template=None) -> Path:
    """Render DATA_CARD.md and its plots for the samples in `report.index`."""
    out_dir = Path(out_dir)
    df = report.index if report.index is not None and len(report.index) else manifest.iloc[:0]
    name = name or out_dir.resolve().name
    card_dir = out_dir / "card"
    plots = _plots(df) if len(df) else {}
    for key, png in plots.items():
        atomic_write_bytes(card_dir / f"{key}.png", png)
    dropped = _dropped(report, out_dir)
    models = []
    for col, what in (("caption_model", "caption model"), ("prompt_id", "caption prompt")):
        if col in df:
            models += [(what, v, n) for v, n in df[col].dropna().astype(str).value_counts().items()]
    similarity, dedup_text = "", "Not deduplicated (no index given, or --no-dedup)."
    if index_dir is not None and (Path(index_dir) / "index.json").exists():
        meta = json.loads((Path(index_dir) / "index.json").read_text())
        models += [("visual embedding", meta["visual"].get("model", meta["visual"]["name"]), meta["clips"]),
                   ("text embedding", meta["text"]["name"], meta["clips"])]
        d = meta["dedup"]
        dedup_text = (f"Clips with cosine similarity >= {d['threshold']} between visual embeddings "
                      f"({meta['visual']['name']}), or identical frame hashes, form groups; {d['groups']} groups "
                      f"were found among {meta['clips']} indexed clips and one clip per group is kept: "
                      f"{d['keep_rule']}. Pair search: {d['method']}.")
        sim = Path(index_dir) / "similarity.npz"
        if sim.exists():
            z = np.load(sim)
            atomic_write_bytes(card_dir / "similarity.png", similarity_plot(z["nearest"], float(z["threshold"])))
            similarity = "![nearest-neighbour similarity](card/similarity.png)"
    shards = list(report.shards)
    csv = (out_dir / "opensora.csv").exists() and not shards
    files = [out_dir / "opensora.csv", *(out_dir / "clips").glob("*")] if csv else [out_dir / s for s in shards]
    size = sum(f.stat().st_size for f in files if f.is_file())
    fields = {
        "name": name, "size_category": _size_category(len(df)),
        "data_files": "opensora.csv" if csv else "*.tar",
        "clips": len(df), "hours": f"{_durations(df).sum() / 3600:.3f}" if len(df) else "0",
        "sources": df["video_sha256"].nunique() if len(df) else 0, "shards": len(shards),
        "size": f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB",
        "dropped_total": sum(n for _, n in dropped), "dropped_table": _table(dropped, ("reason", "clips")),
        "models_table": _table(models, ("role", "model / id", "clips")),
        "format_text": ("`opensora.csv` (Open-Sora columns) and the clip files under `clips/`." if csv else
                        "WebDataset tar shards, one bucket (resolution, aspect ratio, frame count) per shard; "
                        "`index.parquet` lists every sample with its shard and manifest row."),
        "similarity_plot": similarity, "dedup_text": dedup_text,
    }
    template = Path(template or TEMPLATE)
    if not template.exists():
        raise FileNotFoundError(f"data card template {template} not found (pass --card-template)")
    text = Template(template.read_text(encoding="utf-8")).safe_substitute(fields)
    return atomic_write_text(out_dir / "DATA_CARD.md", text)
