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

Every step is SQL over the manifest streamed by DuckDB (`index.query.Input`, whose view `input` holds the usable
rows, each with `_row`, its position): a step's survivors are a table of `_row` numbers (8 bytes a clip, spilled
to disk past the query's memory limit), so no step holds the manifest or a Python object per clip. What the card
needs of the rows the filters saw (each score's range, median and histogram, the camera-motion counts) is
aggregated here while they are at hand.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .. import query
from ..query import ident
from .where import Node, keep_top_sql, number, steps

STAGE = "shards"
KINDS = ("failed", "flagged", "filtered", "exact copy", "near duplicate", "unfit")
SCORE_COLUMNS = ("aesthetic", "motion", "motion_max", "sharpness", "brightness", "black_frac", "text_area", "bpp",
                 "text_match", "nsfw")  # the scorer's; any numeric `score_*` column is a score too
HOURS = "coalesce(sum(round(greatest(CAST(end_sec AS DOUBLE) - CAST(start_sec AS DOUBLE), 0), 6)), 0) / 3600"
FLAGS = ("list_distinct(list_filter(list_transform(string_split(coalesce(CAST(caption_flags AS VARCHAR), ''), ','), "
         "lambda f: trim(f)), lambda f: f <> ''))")
BLANK = " \t\n\r\f\v"


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
    table: str = ""  # the connection's table of the `_row`s left (see `rows`)
    steps: list[Step] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    flags: dict = field(default_factory=dict)  # flag -> {"dropped": n, "kept": n}
    scored: dict = field(default_factory=dict)  # score -> stats of the rows the filters saw (see `score_stats`)
    categories: dict = field(default_factory=dict)  # camera_motion -> clips before the filters
    where_nodes: list = field(default_factory=list)  # the --where steps (their thresholds go on the histograms)
    input_rows: int = 0
    input_hours: float = 0.0
    _n: int = 0

    def rows(self, table: str | None = None) -> str:
        """The input's rows in `table` (default: those left) as a relation."""
        return f"(SELECT i.* FROM input i SEMI JOIN {table or self.table} s ON i._row = s._row)"

    def add(self, con, kind: str, condition: str, keep_sql: str, **kw) -> str:
        """Keep the rows of the current set that `keep_sql` (a query of their `_row`s) returns; record the step."""
        self._n += 1
        name = f"_sel{self._n}"
        con.execute(f"CREATE TABLE {name} AS SELECT _row FROM ({keep_sql})")
        before = query.scalar(con, f"SELECT count(*) FROM {self.table}")
        n, h = con.execute(f"SELECT count(*), {HOURS} FROM {self.rows(name)}").fetchall()[0]
        self.steps.append(Step(kind, condition, int(before - n), int(n), float(h), **kw))
        con.execute(f"DROP TABLE {self.table}")
        self.table = name
        return name

    def dropped(self) -> dict[str, int]:
        out = Counter()
        for s in self.steps:
            out[s.kind] += s.dropped
        return {k: out[k] for k in KINDS if out[k]}


def hours(con, relation: str) -> float:
    """Hours of the clips, from their PTS range (num_frames / fps is off for variable-frame-rate sources)."""
    return float(query.scalar(con, f"SELECT {HOURS} FROM {relation}"))


def column_types(con, relation: str) -> dict[str, str]:
    return dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {relation})").fetchall())


def score_columns(types: dict) -> list[str]:
    from .where import kinds_of_sql

    kinds = kinds_of_sql(types)
    return [c for c in types if (c in SCORE_COLUMNS or str(c).startswith("score_")) and kinds[c] == "number"]


def select_clips(con, inp, source: str = "manifest", allow_flags=(), where: Node | None = None, keep_tops=(),
                 dedup: str | None = None, require_indexed: bool = False, failures=()) -> Selection:
    """The clip set of a build (see the module docstring) over `inp` (an `index.query.Input`). `dedup`: a relation
    of the index's clip_id, dup_group, keep (+ x_batch, x_frame_hash when it has them), or None: no dedup;
    `require_indexed`: drop clips the index does not hold (an index given with --index, made from another
    manifest) instead of shipping them undeduplicated."""
    types = column_types(con, "input")
    sel = Selection(failures=list(inp.failures) + list(failures),
                    input_rows=inp.rows + len(failures), input_hours=hours(con, "input"))
    con.execute("CREATE TABLE _sel0 AS SELECT _row FROM input")
    sel.table = "_sel0"
    caption = "CAST(caption AS VARCHAR)" if "caption" in types else "CAST(NULL AS VARCHAR)"
    has = f"({caption} IS NOT NULL AND trim({caption}, {query.quote(BLANK)}) <> '')"
    for batch in query.batches(con, f"SELECT video_path, clip_id FROM input WHERE NOT {has} ORDER BY _row"):
        for path, cid in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            sel.failures.append(query_failure(path, f"clip {cid}: no caption"))
    blank = int(query.scalar(con, f"SELECT count(*) FROM input WHERE NOT {has}"))
    sel.add(con, "failed", "unusable rows (out of range, repeated, no caption)",
            f"SELECT _row FROM input WHERE {has}")
    sel.steps[-1].dropped = len(inp.failures) + len(failures) + blank

    allowed = sorted(set(allow_flags))
    flags = FLAGS if "caption_flags" in types else "[]::VARCHAR[]"
    if "all" in allowed:
        ok = "true"
    elif allowed:
        ok = f"len(list_filter({flags}, lambda f: f NOT IN ({', '.join(query.quote(a) for a in allowed)}))) = 0"
    else:
        ok = f"len({flags}) = 0"
    for flag, kept, n in con.execute(f"SELECT f, k, count(*) FROM (SELECT unnest({flags}) AS f, {ok} AS k "
                                     f"FROM {sel.rows()}) GROUP BY ALL ORDER BY ALL").fetchall():
        sel.flags.setdefault(flag, {"dropped": 0, "kept": 0})["kept" if kept else "dropped"] += int(n)
    allow_text = f" (allowed: {', '.join(allowed)})" if allowed else ""
    sel.add(con, "flagged", f"caption flagged{allow_text}", f"SELECT _row FROM {sel.rows()} WHERE {ok}")

    sel.scored = score_stats(con, sel.rows(), score_columns(types))
    if "camera_motion" in types:
        sel.categories = category_counts(con, sel.rows(), "camera_motion")
    sel.where_nodes = steps(where) if where is not None else []
    for node in sel.where_nodes:
        col = next(iter(node.columns())) if len(node.columns()) == 1 else None
        sel.add(con, "filtered", node.text(), f"SELECT _row FROM {sel.rows()} WHERE {node.where()}", column=col)
    for col, fraction in keep_tops:
        kept, threshold = keep_top_sql(con, sel.rows(), col, fraction)
        sel.add(con, "filtered", f"top {fraction:.0%} by {col} ({col} >= {threshold:g})" if threshold is not None
                else f"top {fraction:.0%} by {col}", f"SELECT _row FROM ({kept})", column=col, threshold=threshold)
    if dedup is not None:
        _dedup(con, sel, dedup, require_indexed, types)
    return sel


def query_failure(path, reason: str) -> dict:
    from ..parts import failure

    return failure(path, STAGE, reason)


def _dedup(con, sel: Selection, table: str, require_indexed: bool, types: dict) -> None:
    """One clip per duplicate group among the clips left, by `KEEP_RULE` (`index.dedup.groups._keep_order` as
    SQL); a clip that is not kept and whose frames hash like the keeper's is an exact copy."""
    names = query.names_of(con, f"SELECT * FROM {table}")
    batch = "coalesce(TRY_CAST(x_batch AS BIGINT), 0)" if "x_batch" in names else "0"
    fhash = "CAST(x_frame_hash AS VARCHAR)" if "x_frame_hash" in names else "CAST(NULL AS VARCHAR)"
    con.execute(f"CREATE TABLE _dd AS SELECT CAST(clip_id AS VARCHAR) AS clip_id, "
                f"TRY_CAST(dup_group AS BIGINT) AS dup_group, {batch} AS batch, "
                f"{fhash} AS fhash FROM (SELECT *, row_number() OVER () AS _o FROM {table}) "
                "QUALIFY row_number() OVER (PARTITION BY CAST(clip_id AS VARCHAR) ORDER BY _o) = 1")
    if require_indexed:
        sel.add(con, "failed", "not in the index given with --index (run index-clips on this manifest)",
                f"SELECT i._row FROM {sel.rows()} i WHERE CAST(i.clip_id AS VARCHAR) IN (SELECT clip_id FROM _dd)")
    caption = "coalesce(CAST(i.caption AS VARCHAR), '')" if "caption" in types else "''"
    flags = "coalesce(CAST(i.caption_flags AS VARCHAR), '')" if "caption_flags" in types else "''"
    blank = query.quote(BLANK)
    order = (f"(trim({caption}, {blank}) = '')::INT, d.batch, "
             "-coalesce(CAST(i.num_frames AS DOUBLE) / nullif(CAST(i.fps AS DOUBLE), 0), 0), "
             "-(CAST(i.width AS DOUBLE) * CAST(i.height AS DOUBLE)), "
             f"(trim({caption}, {blank}) = '' OR trim({flags}, {blank}) <> '')::INT, -length({caption}), "
             "CAST(i.clip_id AS VARCHAR)")
    con.execute(f"CREATE TABLE _ranked AS SELECT i._row, coalesce(d.dup_group, -1) AS g, d.fhash, "
                f"CASE WHEN coalesce(d.dup_group, -1) < 0 THEN 1 ELSE row_number() OVER (PARTITION BY "
                f"coalesce(d.dup_group, -1) ORDER BY {order}) END AS rank FROM {sel.rows()} i LEFT JOIN _dd d "
                "ON CAST(i.clip_id AS VARCHAR) = d.clip_id")
    con.execute("CREATE TABLE _keeper AS SELECT g, fhash FROM _ranked WHERE g >= 0 AND rank = 1")
    exact = ("r.rank > 1 AND r.fhash IS NOT NULL AND r.fhash <> 'nan' AND r.fhash = k.fhash")
    sel.add(con, "exact copy", "identical frames (frame hash)",
            f"SELECT r._row FROM _ranked r LEFT JOIN _keeper k ON r.g = k.g WHERE NOT coalesce({exact}, false)")
    sel.add(con, "near duplicate", "visually similar above the index's threshold",
            f"SELECT r._row FROM _ranked r SEMI JOIN {sel.table} s ON r._row = s._row WHERE r.rank = 1")
    con.execute("DROP TABLE _ranked; DROP TABLE _keeper; DROP TABLE _dd")


# ---------------------------------------------------------------- what the card draws, as aggregates

def bin_edges(lo: float, hi: float, n: int, integer: bool = False, most: int = 30) -> list[float]:
    """Bin edges spanning only the data (`plots._bins` from the data's min, max and count)."""
    import numpy as np

    if integer:
        lo, hi = np.floor(lo), np.ceil(hi)
        step = max(1.0, np.ceil((hi - lo + 1) / most))
        return list(np.arange(lo - 0.5, hi + step + 0.5, step))
    if hi - lo < 1e-9:
        pad = max(abs(lo) * 0.05, 0.5)
        return list(np.linspace(lo - pad, hi + pad, 3))
    return list(np.linspace(lo, hi, min(most, max(5, n // 2)) + 1))


def histogram(con, relation: str, expr: str, integer: bool = False) -> tuple[list, list] | None:
    """(edges, counts) of the finite values of `expr` over `relation`, binned as `plots._bins` bins them (the last
    bin holds its right edge, as numpy's); None when there is no value. Two aggregate passes, no values held."""
    v = number(expr)
    fin = f"{v} IS NOT NULL AND isfinite({v})"
    n, lo, hi = con.execute(f"SELECT count(*), min({v}), max({v}) FROM {relation} WHERE {fin}").fetchall()[0]
    if not n:
        return None
    edges = bin_edges(float(lo), float(hi), int(n), integer)
    e0, width, bins = float(edges[0]), float(edges[1] - edges[0]), len(edges) - 1
    got = dict(con.execute(f"SELECT least(greatest(CAST(floor(({v} - {e0!r}) / {width!r}) AS BIGINT), 0), "
                           f"{bins - 1}) AS b, count(*) FROM {relation} WHERE {fin} GROUP BY b").fetchall())
    return edges, [int(got.get(b, 0)) for b in range(bins)]


def score_stats(con, relation: str, columns) -> dict:
    """score -> {count, min, median, max, hist}: the range of each score over `relation`."""
    out = {}
    for col in columns:
        v = number(ident(col))
        n, lo, med, hi = con.execute(f"SELECT count({v}), min({v}), quantile_cont({v}, 0.5), max({v}) "
                                     f"FROM {relation}").fetchall()[0]
        out[col] = {"count": int(n), "min": lo, "median": med, "max": hi,
                    "hist": histogram(con, relation, ident(col)) if n else None}
    return out


def category_counts(con, relation: str, column: str) -> dict:
    """value -> clips, most first (ties by value), of a text column's values over `relation`."""
    c = f"CAST({ident(column)} AS VARCHAR)"
    return dict(con.execute(f"SELECT {c} AS v, count(*) AS n FROM {relation} WHERE {ident(column)} IS NOT NULL "
                            "GROUP BY v ORDER BY n DESC, v").fetchall())
