"""Which clips a build ships, decided in a fixed order of steps, each one recorded for the summary and the card.

    rows of the manifest
    -> unusable rows (out-of-range values, repeated clip_id, no caption)   failed   (failed.jsonl)
    -> flagged captions (caption_flags), unless --allow-flags              flagged
    -> each top-level condition of --where, in the order written           filtered
    -> each --keep-top COL:FRACTION, in the order given                    filtered
    -> duplicates (the index's dup_group), one clip kept per group         exact copy / near duplicate

Duplicates come last so that a group whose best clip was filtered out still ships its best remaining clip.
Within a group the clip kept follows `index.dedup.groups.KEEP_RULE` over the clips still in the set.
Later steps (sources that cannot be cut, clips that cannot meet the clip options) are added by the build.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..manifest import check_rows, failure
from .where import Node, keep_top, steps

STAGE = "shards"
KINDS = ("failed", "flagged", "filtered", "exact copy", "near duplicate", "unfit")


@dataclass
class Step:
    kind: str  # one of KINDS
    condition: str  # what was asked ("aesthetic >= 5", "caption flagged", ...)
    dropped: int
    clips: int  # left after this step
    hours: float  # left after this step
    column: str | None = None  # for a threshold on one score: drawn on its histogram
    threshold: float | None = None


@dataclass
class Selection:
    clips: pd.DataFrame
    steps: list[Step] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    flags: dict = field(default_factory=dict)  # flag -> {"dropped": n, "kept": n}
    scored: pd.DataFrame | None = None  # the rows the filters saw (for the card's score histograms)
    where_nodes: list = field(default_factory=list)  # the --where steps (their thresholds go on the histograms)
    input_rows: int = 0
    input_hours: float = 0.0

    def add(self, kind: str, condition: str, keep: np.ndarray, df: pd.DataFrame, **kw) -> pd.DataFrame:
        kept = df[keep]
        self.steps.append(Step(kind, condition, int((~keep).sum()), len(kept), hours(kept), **kw))
        return kept

    def dropped(self) -> dict[str, int]:
        out = Counter()
        for s in self.steps:
            out[s.kind] += s.dropped
        return {k: out[k] for k in KINDS if out[k]}


def hours(df: pd.DataFrame) -> float:
    """Hours of the clips, from their PTS range (num_frames / fps is off for variable-frame-rate sources)."""
    if not len(df):
        return 0.0
    return float((df["end_sec"].astype(float) - df["start_sec"].astype(float)).clip(lower=0).round(6).sum() / 3600)


def flag_sets(df: pd.DataFrame) -> list[set[str]]:
    col = df["caption_flags"] if "caption_flags" in df else pd.Series([""] * len(df), index=df.index)
    return [set() if not isinstance(v, str) else {f.strip() for f in v.split(",") if f.strip()} for v in col]


def select_clips(df: pd.DataFrame, source: str = "manifest", allow_flags=(), where: Node | None = None,
                 keep_tops=(), dedup: pd.DataFrame | None = None, require_indexed: bool = False,
                 failures=()) -> Selection:
    """The clip set of a build (see the module docstring). `dedup`: the index's clip_id, dup_group, keep,
    x_batch, x_frame_hash (None: no dedup); `require_indexed`: drop clips the index does not hold (an index
    given with --index, made from another manifest) instead of shipping them undeduplicated."""
    sel = Selection(df, failures=list(failures), input_rows=len(df) + len(failures), input_hours=hours(df))
    ok, bad = check_rows(df.reset_index(drop=True), source, STAGE)
    sel.failures += bad
    caption = ok["caption"] if "caption" in ok else pd.Series([None] * len(ok), index=ok.index, dtype=object)
    no_caption = (caption.isna() | (caption.astype(str).str.strip() == "")).to_numpy()
    for r in ok[no_caption].itertuples():
        sel.failures.append(failure(r.video_path, STAGE, f"clip {r.clip_id}: no caption"))
    failed = len(bad) + len(failures) + int(no_caption.sum())
    sel.steps.append(Step("failed", "unusable rows (out of range, repeated, no caption)", failed,
                          int((~no_caption).sum()), hours(ok[~no_caption])))
    df = ok[~no_caption]

    allowed = set(allow_flags)
    sets = flag_sets(df)
    keep = np.array([not (s - allowed) if "all" not in allowed else True for s in sets], bool)
    for s, k in zip(sets, keep):
        for f in s:
            sel.flags.setdefault(f, {"dropped": 0, "kept": 0})["kept" if k else "dropped"] += 1
    allow_text = f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""
    df = sel.add("flagged", f"caption flagged{allow_text}", keep, df)

    sel.scored = df
    sel.where_nodes = steps(where) if where is not None else []
    for node in sel.where_nodes:
        col = next(iter(node.columns())) if len(node.columns()) == 1 else None
        df = sel.add("filtered", node.text(), node.mask(df), df, column=col)
    for col, fraction in keep_tops:
        mask, threshold = keep_top(df, col, fraction)
        df = sel.add("filtered", f"top {fraction:.0%} by {col} ({col} >= {threshold:g})" if threshold is not None
                     else f"top {fraction:.0%} by {col}", mask, df, column=col, threshold=threshold)

    if dedup is not None:
        df = _dedup(sel, df, dedup, require_indexed)
    sel.clips = df.reset_index(drop=True)
    return sel


def _dedup(sel: Selection, df: pd.DataFrame, table: pd.DataFrame, require_indexed: bool) -> pd.DataFrame:
    from ..dedup import groups as dd

    table = table.drop_duplicates("clip_id", keep="first").set_index("clip_id")
    known = df["clip_id"].isin(table.index).to_numpy()
    if require_indexed:
        df = sel.add("failed", "not in the index given with --index (run index-clips on this manifest)", known, df)
        known = np.ones(len(df), bool)
    info = table.reindex(df["clip_id"])
    group = info["dup_group"].fillna(-1).astype(int).to_numpy()
    grouped = (group >= 0) & known
    rows = df.reset_index(drop=True).assign(batch=info["x_batch"].fillna(0).astype(int).to_numpy()
                                            if "x_batch" in info else 0)
    members = pd.Series(np.arange(len(rows)))[grouped].groupby(group[grouped])
    ii = np.concatenate([m.to_numpy()[:1].repeat(len(m) - 1) for _, m in members] or [np.zeros(0, int)])
    jj = np.concatenate([m.to_numpy()[1:] for _, m in members] or [np.zeros(0, int)])
    # the groups are the index's (transitively similar clips); the keeper is chosen among the clips left
    _, keep = dd.assign_groups(rows, ii, jj)
    hashes = info["x_frame_hash"].astype(str).to_numpy() if "x_frame_hash" in info else np.array([""] * len(df))
    keeper_hash = {g: h for g, h, k in zip(group, hashes, keep) if g >= 0 and k}
    exact = np.array([not k and g >= 0 and h != "nan" and keeper_hash.get(g) == h
                      for g, h, k in zip(group, hashes, keep)], bool)
    df = sel.add("exact copy", "identical frames (frame hash)", ~exact, df)
    return sel.add("near duplicate", "visually similar above the index's threshold", keep[~exact], df)
