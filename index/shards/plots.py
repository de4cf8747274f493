"""The data card's figures (PNG bytes, matplotlib's Agg backend): every axis spans the data, counts are integers.

Aspect ratios are named w:h by `names.aspect_name` (the shard buckets' names); score histograms draw the
thresholds a build used; the similarity histogram counts exactly the clips the card describes. The card's figures
are drawn from counts that SQL aggregates computed over the streamed index (`distributions`, `histogram_counts`,
`categories`): no figure needs the clips' values in memory.
"""

from __future__ import annotations

import io
from collections import Counter

import numpy as np

from .names import ASPECTS, aspect_name

STOPWORDS = set("""a an the and or of in on at to with from by for is are was were be been it its this that
these those as into over under while his her their there here then than through up down out off one two
video clip shows scene camera frame""".split())
BLUE, RED, GREEN, PURPLE, ORANGE, CYAN, GREY = "#4c72b0", "#c44e52", "#55a868", "#8172b2", "#dd8452", "#64b5cd", "#b0b0b0"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def _integer_counts(ax, axis: str = "y") -> None:
    from matplotlib.ticker import MaxNLocator
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_locator(MaxNLocator(integer=True))


def _bins(values: np.ndarray, integer: bool = False, most: int = 30) -> np.ndarray:
    """Bin edges spanning only the data (one bin per integer for small integer ranges)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if integer:
        lo, hi = np.floor(lo), np.ceil(hi)
        step = max(1.0, np.ceil((hi - lo + 1) / most))
        return np.arange(lo - 0.5, hi + step + 0.5, step)
    if hi - lo < 1e-9:
        pad = max(abs(lo) * 0.05, 0.5)
        return np.linspace(lo - pad, hi + pad, 3)
    return np.linspace(lo, hi, min(most, max(5, len(values) // 2)) + 1)


def histogram(values, xlabel: str, colour: str = BLUE, integer: bool = False, lines=(), title: str = "") -> bytes:
    """A linear histogram of `values` over their own range; `lines`: (x, label) drawn as dashed verticals."""
    return _png(histogram_figure(values, xlabel, colour, integer, lines, title))


def histogram_figure(values, xlabel: str, colour: str = BLUE, integer: bool = False, lines=(), title: str = ""):
    plt = _plt()
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if len(values):
        ax.hist(values, bins=_bins(values, integer), color=colour)
    for x, label in lines:
        ax.axvline(x, color=RED, ls="--", label=label)
    if lines:
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("clips")
    if title:
        ax.set_title(title, fontsize=10)
    _integer_counts(ax)
    if integer:
        _integer_counts(ax, "x")
    return fig


def histogram_counts(edges, counts, xlabel: str, colour: str = BLUE, integer: bool = False, lines=(),
                     title: str = "") -> bytes:
    """`histogram` from bin edges and counts (`select.histogram`): the same bars, drawn from the counts."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if edges is not None and len(counts):
        edges = np.asarray(edges, float)
        ax.hist(edges[:-1], bins=edges, weights=np.asarray(counts, float), color=colour)
    for x, label in lines:
        ax.axvline(x, color=RED, ls="--", label=label)
    if lines:
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("clips")
    if title:
        ax.set_title(title, fontsize=10)
    _integer_counts(ax)
    if integer:
        _integer_counts(ax, "x")
    return _png(fig)


def similarity(nearest: np.ndarray, threshold: float, among: str = "in this dataset") -> bytes:
    """Nearest-neighbour cosine similarity of the clips, over the data's range; the dedup threshold is drawn
    when it falls inside that range and named in the title otherwise."""
    nearest = np.asarray(nearest, float)
    inside = len(nearest) and nearest.min() <= threshold <= nearest.max()
    where = "" if inside or not len(nearest) else (" (above every clip)" if threshold > nearest.max()
                                                    else " (below every clip)")
    return histogram(nearest, f"cosine similarity to the nearest other clip {among}", BLUE,
                     lines=[(threshold, f"dedup threshold {threshold:.2f}")] if inside else [],
                     title=f"{len(nearest)} clips; dedup threshold {threshold:.2f}{where}")


def distributions(con, index: str) -> dict[str, bytes]:
    """duration, resolution + aspect ratio, caption length, frequent words: SQL aggregates over the relation
    `index` (the clips of the card), then figures of the counts."""
    from .select import histogram

    plt = _plt()
    out = {}
    dur = "round(greatest(CAST(end_sec AS DOUBLE) - CAST(start_sec AS DOUBLE), 0), 6)"
    edges, counts = histogram(con, index, dur) or (None, [])
    out["duration"] = histogram_counts(edges, counts, "clip duration (s)")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    sizes = con.execute(f"SELECT CAST(width AS BIGINT) AS w, CAST(height AS BIGINT) AS h, count(*) AS n FROM {index} "
                        "GROUP BY ALL ORDER BY n DESC, w, h").fetchall()
    res = [(f"{w}x{h}", n) for w, h, n in sizes[:12]]
    a1.barh([r for r, _ in res][::-1], [n for _, n in res][::-1], color=GREEN)
    a1.set_xlabel("clips")
    a1.set_title("resolution (width x height)")
    _integer_counts(a1, "x")
    names = Counter()
    for w, h, n in sizes:
        names[aspect_name(w, h)] += n
    order = sorted(names, key=lambda n: -ASPECTS[n])  # widest first
    a2.bar(order, [names[n] for n in order], color=PURPLE)
    a2.set_title("aspect ratio (w:h, nearest standard)")
    a2.set_ylabel("clips")
    _integer_counts(a2)
    out["resolution"] = _png(fig)

    has_caption = "caption" in [d[0] for d in con.execute(f"SELECT * FROM {index} LIMIT 0").description]
    text = "coalesce(CAST(caption AS VARCHAR), '')" if has_caption else "''"
    words = f"CASE WHEN regexp_matches({text}, '^\\s*$') THEN 0 ELSE len(regexp_split_to_array(regexp_replace(" \
            f"{text}, '^\\s+|\\s+$', '', 'g'), '\\s+')) END"
    edges, counts = histogram(con, index, words, integer=True) or (None, [])
    out["caption_length"] = histogram_counts(edges, counts, "caption length (words)", ORANGE, integer=True)

    stop = ", ".join("'" + w.replace("'", "''") + "'" for w in sorted(STOPWORDS))
    top = con.execute(f"SELECT w, count(*) AS n FROM (SELECT unnest(regexp_extract_all(lower({text}), "
                      f"'[a-z][a-z''-]+')) AS w FROM {index}) WHERE w NOT IN ({stop}) GROUP BY w "
                      "ORDER BY n DESC, w LIMIT 20").fetchall()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if top:
        ax.barh([w for w, _ in top][::-1], [n for _, n in top][::-1], color=CYAN)
    ax.set_xlabel("occurrences")
    ax.set_title("most frequent caption words")
    _integer_counts(ax, "x")
    out["words"] = _png(fig)
    return out


def categories(before: dict, after: dict, title: str) -> bytes:
    """Counts per value before the filters (grey) and in the dataset (colour), side by side ({value: clips})."""
    plt = _plt()
    labels = list(before)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(x - 0.2, [before.get(k, 0) for k in labels], 0.4, color=GREY, label="before the filters")
    ax.bar(x + 0.2, [after.get(k, 0) for k in labels], 0.4, color=BLUE, label="in this dataset")
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("clips")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _integer_counts(ax)
    return _png(fig)
