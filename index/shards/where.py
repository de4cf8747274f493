"""`--where`: a small filter language over manifest columns, parsed here and evaluated by DuckDB as SQL.

    aesthetic >= 5 and motion > 0.3 and text_area < 0.02
    not text_static and camera_motion in ("static", "pan_left")
    (motion > 1 or aesthetic > 6) and 0.2 <= black_frac < 0.5

Grammar (keywords in any case):

    expr  := term ("or" term)*            term := factor ("and" factor)*
    factor := "not" factor | "(" expr ")" | test
    test  := value (OP value)+            a chain: 0.2 <= x < 0.5 means 0.2 <= x and x < 0.5
           | NAME ["not"] "in" "(" literal ("," literal)* ")"
           | NAME                         a true/false column on its own
    value := NAME | NUMBER | "quoted text" | 'quoted text' | true | false
    OP    := < <= > >= == = !=

Nothing the user wrote reaches Python or SQL as text: the parser here turns it into a small tree of these
nodes (so a mistake is one line naming the spot), and `Node.sql()` writes the tree as a SQL expression with
quoted identifiers and literals, which DuckDB evaluates over the streamed manifest (`index.query`). Columns are
checked against the manifest's schema before any work: an unknown name is a usage error naming the nearest
column; text compares only with text (== != in), numbers with numbers. A clip with no value (NULL, or NaN in a
float column: NaN is made NULL first, see `number`) makes a comparison on it
unknown, and unknowns combine as SQL's do: `unknown or true` is true, `unknown and false` is false,
`not unknown` is unknown, and a clip whose whole filter is unknown is not kept ("unknown" is never "kept").

The top-level `and` terms are the filter's steps: the data card's retention table shows what each costs.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

_TOKEN = re.compile(r"""\s*(?:
    (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<op><=|>=|==|!=|<|>|=|\(|\)|,)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
)""", re.VERBOSE)
KEYWORDS = {"and", "or", "not", "in", "true", "false"}
OPS = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "=": "eq", "!=": "ne"}
FLIP = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}
SYMBOL = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


class WhereError(ValueError):
    """A filter the user wrote that cannot be used: one line, a usage error."""


@dataclass(frozen=True)
class Node:
    kind: str  # and, or, not, cmp, in, bool
    args: tuple  # and/or: (left, right); not: (node,); cmp: (op, column, value); in: (column, values, negate)

    def columns(self) -> set[str]:
        if self.kind in ("and", "or", "not"):
            return set().union(*(a.columns() for a in self.args))
        return {self.args[1] if self.kind == "cmp" else self.args[0]}

    def text(self) -> str:
        """The condition written back, normalised: `aesthetic >= 5`."""
        k, a = self.kind, self.args
        if k == "and":
            return f"{_paren(a[0], 'or')} and {_paren(a[1], 'or')}"
        if k == "or":
            return f"{a[0].text()} or {a[1].text()}"
        if k == "not":
            return f"not {_paren(a[0], 'and', 'or')}"
        if k == "cmp":
            return f"{a[1]} {SYMBOL[a[0]]} {_literal(a[2])}"
        if k == "in":
            return f"{a[0]} {'not in' if a[2] else 'in'} ({', '.join(_literal(v) for v in a[1])})"
        return a[0]

    def sql(self) -> str:
        """The condition as a SQL expression (three-valued, as SQL is: NULL where unknown)."""
        k, a = self.kind, self.args
        if k in ("and", "or"):
            return f"({a[0].sql()} {k.upper()} {a[1].sql()})"
        if k == "not":
            return f"(NOT {a[0].sql()})"
        if k == "bool":
            return f"CAST({_column(a[0])} AS BOOLEAN)"
        if k == "in":
            values = ", ".join(_sql_literal(v) for v in a[1])
            return f"({_column(a[0], a[1][0])} {'NOT IN' if a[2] else 'IN'} ({values}))"
        op, col, lit = a
        return f"({_column(col, lit)} {SQL_OPS[op]} {_sql_literal(lit)})"

    def where(self) -> str:
        """The SQL condition of the rows kept: true only (an unknown result is not kept)."""
        return f"coalesce({self.sql()}, false)"

    def mask(self, df: pd.DataFrame) -> np.ndarray:
        """Rows of a small frame that pass, as a boolean array: the same SQL, run by DuckDB on the frame."""
        import duckdb
        import pyarrow as pa

        table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
        con = duckdb.connect()
        try:
            con.register("frame", table)
            got = con.execute(f"SELECT {self.where()} FROM frame").fetchall()  # a scan keeps the rows' order
        finally:
            con.close()
        return np.array([bool(v) for v, in got], dtype=bool)

    def thresholds(self) -> list[tuple[str, str, float]]:
        """(column, op, number) of every numeric comparison inside: the lines drawn on the card's histograms."""
        if self.kind in ("and", "or", "not"):
            return [t for a in self.args for t in a.thresholds()]
        if self.kind == "cmp" and isinstance(self.args[2], (int, float)) and not isinstance(self.args[2], bool):
            return [(self.args[1], self.args[0], float(self.args[2]))]
        return []


SQL_OPS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "=", "ne": "<>"}


def _column(name: str, literal=None) -> str:
    """A column as the filter reads it: a number compared with a number is a DOUBLE whose NaN is NULL (missing, as
    the filter has always treated NaN); anything else as it is."""
    col = '"' + str(name).replace('"', '""') + '"'
    if isinstance(literal, (int, float)) and not isinstance(literal, bool):
        return number(col)
    return col


def number(expr: str) -> str:
    """`expr` as a DOUBLE, NaN as NULL. NaN is what is neither finite nor infinite: DuckDB's isnan() and NaN
    comparisons do not see every NaN a Parquet file holds (`isnan` is false for numpy's NaN read from a file)."""
    v = f"TRY_CAST({expr} AS DOUBLE)"
    return f"(CASE WHEN isfinite({v}) OR isinf({v}) THEN {v} END)"


def _sql_literal(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return repr(float(v)) if isinstance(v, float) else str(int(v))


def _paren(node: Node, *kinds: str) -> str:
    return f"({node.text()})" if node.kind in kinds else node.text()


def _literal(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{v:g}" if isinstance(v, float) else str(v)


def kinds_of_sql(types: dict) -> dict[str, str]:
    """{column: bool | number | text} from DuckDB's column types (DESCRIBE of the manifest)."""
    out = {}
    for col, t in types.items():
        t = str(t).upper()
        if t == "BOOLEAN":
            out[col] = "bool"
        elif re.match(r"(U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?|FLOAT|DOUBLE|REAL|DECIMAL)", t):
            out[col] = "number"
        else:
            out[col] = "text"
    return out


def column_kinds(columns) -> dict[str, str]:
    """{column: kind} of a DataFrame (a small frame, tests) or of a mapping already made by `kinds_of_sql`."""
    if isinstance(columns, pd.DataFrame):
        return {c: _kind_of(columns[c]) for c in columns.columns}
    return dict(columns)


def _kind_of(s: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(s):
        return "bool"
    if pd.api.types.is_numeric_dtype(s):
        return "number"
    values = s.dropna()
    if len(values) and values.map(lambda v: isinstance(v, bool)).all():
        return "bool"
    if len(values) and values.map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all():
        return "number"
    return "text"


SCORE_HINTS = {"aesthetic": "default,aesthetic", "text_match": "default,text_match", "nsfw": "default,nsfw",
               **{c: "default" for c in ("motion", "motion_max", "camera_motion", "sharpness", "brightness",
                                         "black_frac", "text_area", "text_static", "bpp")}}


def nearest_column(name: str, columns) -> str:
    """`no column 'x'` plus the nearest column's name (or the list when none is near)."""
    cols = [str(c) for c in columns]
    near = difflib.get_close_matches(name, cols, n=1, cutoff=0.5) or difflib.get_close_matches(
        name.lower(), [c.lower() for c in cols], n=1, cutoff=0.0)
    hint = ""
    if name in SCORE_HINTS:  # a score the manifest was not given: say which command writes it
        hint = f"; score-clips writes it (--scorers {SCORE_HINTS[name]})"
    if near:
        match = next(c for c in cols if c.lower() == near[0].lower())
        return f"no column {name!r} in the manifest (nearest: {match}){hint}"
    return f"no column {name!r} in the manifest (columns: {', '.join(cols)})"


class _Parser:
    def __init__(self, text: str, kinds: dict[str, str]):
        self.text, self.kinds = text, kinds
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                if not text[pos:].strip():
                    break
                raise self.error(f"cannot read {text[pos:].strip()[:20]!r}", pos)
            kind = m.lastgroup
            self.tokens.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.i = 0

    def error(self, what: str, pos: int | None = None) -> WhereError:
        where = f" at character {pos + 1}" if pos is not None else ""
        return WhereError(f"--where {self.text!r}: {what}{where}")

    def peek(self, *values: str) -> bool:
        if self.i >= len(self.tokens):
            return False
        kind, text, _ = self.tokens[self.i]
        return (text.lower() if kind == "name" else text) in values and (kind != "name" or text.lower() in KEYWORDS)

    def take(self) -> tuple[str, str, int]:
        if self.i >= len(self.tokens):
            raise self.error("unexpected end (a condition is missing)")
        self.i += 1
        return self.tokens[self.i - 1]

    def expect(self, value: str) -> None:
        if not self.peek(value):
            got = self.tokens[self.i] if self.i < len(self.tokens) else None
            raise self.error(f"expected {value!r}" + (f", found {got[1]!r}" if got else " at the end"),
                             got[2] if got else None)
        self.i += 1

    def parse(self) -> Node:
        if not self.tokens:
            raise self.error("empty filter")
        node = self.expr()
        if self.i < len(self.tokens):
            _, text, pos = self.tokens[self.i]
            raise self.error(f"unexpected {text!r} (join conditions with 'and' / 'or')", pos)
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek("or"):
            self.i += 1
            node = Node("or", (node, self.term()))
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek("and"):
            self.i += 1
            node = Node("and", (node, self.factor()))
        return node

    def factor(self) -> Node:
        if self.peek("not"):
            self.i += 1
            return Node("not", (self.factor(),))
        if self.peek("("):
            self.i += 1
            node = self.expr()
            self.expect(")")
            return node
        return self.test()

    def value(self):
        kind, text, pos = self.take()
        if kind == "num":
            return float(text) if any(c in text for c in ".eE") else int(text), "number", pos
        if kind == "str":
            return re.sub(r"\\(.)", r"\1", text[1:-1]), "text", pos
        if kind == "name" and text.lower() in ("true", "false"):
            return text.lower() == "true", "bool", pos
        if kind == "name" and text.lower() not in KEYWORDS:
            if text not in self.kinds:
                raise self.error(nearest_column(text, self.kinds), pos)
            return ("col", text), self.kinds[text], pos
        raise self.error(f"expected a column, number or quoted text, found {text!r}", pos)

    def test(self) -> Node:
        left, lkind, pos = self.value()
        if self.peek("not", "in"):
            negate = self.peek("not")
            self.i += negate
            self.expect("in")
            if not isinstance(left, tuple):
                raise self.error("'in' needs a column on its left", pos)
            self.expect("(")
            values = [self.literal(lkind, left[1])]
            while self.peek(","):
                self.i += 1
                values.append(self.literal(lkind, left[1]))
            self.expect(")")
            return Node("in", (left[1], tuple(values), negate))
        parts = []
        while self.i < len(self.tokens) and self.tokens[self.i][0] == "op" and self.tokens[self.i][1] in OPS:
            op = OPS[self.take()[1]]
            right, rkind, rpos = self.value()
            parts.append(self.compare(op, left, lkind, right, rkind, rpos))
            left, lkind = right, rkind
        if not parts:
            if isinstance(left, tuple) and lkind == "bool":
                return Node("bool", (left[1],))
            raise self.error(f"{self.text[pos:].split()[0]!r} is not a condition (compare it: x > 1, x == \"a\")", pos)
        node = parts[0]
        for p in parts[1:]:
            node = Node("and", (node, p))
        return node

    def literal(self, kind: str, column: str):
        value, vkind, pos = self.value()
        if isinstance(value, tuple) or (vkind != kind and not (kind == "number" and vkind == "number")):
            raise self.error(f"{column} holds {kind}; compare it with {kind} values", pos)
        return value

    def compare(self, op, left, lkind, right, rkind, pos) -> Node:
        if isinstance(left, tuple) == isinstance(right, tuple):
            raise self.error("a comparison needs one column and one value", pos)
        if not isinstance(left, tuple):  # 5 < aesthetic -> aesthetic > 5
            op, left, lkind, right, rkind = FLIP[op], right, rkind, left, lkind
        column = left[1]
        if lkind != rkind:
            raise self.error(f"{column} holds {lkind}, not {rkind}", pos)
        if lkind in ("text", "bool") and op not in ("eq", "ne"):
            raise self.error(f"{column} holds {lkind}: compare it with == or != (or 'in')", pos)
        return Node("cmp", (op, column, right))


def parse_where(text: str, columns) -> Node:
    """The filter as a tree, checked against the columns (a DataFrame, or {column: kind} from `kinds_of_sql`);
    WhereError (one line) when it cannot be used."""
    return _Parser(text, column_kinds(columns)).parse()


def steps(node: Node) -> list[Node]:
    """The top-level `and` terms, in the order written: one step each in the retention table."""
    if node.kind == "and":
        return steps(node.args[0]) + steps(node.args[1])
    return [node]


def parse_keep_top(text: str, columns) -> tuple[str, float]:
    """`--keep-top COL:FRACTION` -> (column, fraction); a usage error when it cannot be used. `columns`: as for
    `parse_where`."""
    kinds = column_kinds(columns)
    col, sep, frac = str(text).rpartition(":")
    try:
        fraction = float(frac)
    except ValueError:
        fraction = -1.0
    if not sep or not col or not 0 < fraction <= 1:
        raise WhereError(f"--keep-top {text!r}: write COLUMN:FRACTION with 0 < FRACTION <= 1 (aesthetic:0.8)")
    if col not in kinds:
        raise WhereError(f"--keep-top {text!r}: {nearest_column(col, kinds)}")
    if kinds[col] != "number":
        raise WhereError(f"--keep-top {text!r}: {col} does not hold numbers")
    return col, fraction


def keep_top_sql(con, source: str, column: str, fraction: float) -> tuple[str, float | None]:
    """The best `fraction` of the rows of relation `source` by `column` (ceil; ties broken by clip_id, so the cut
    is the same every run) as a SQL query of those rows, and the smallest value kept. Rows without a value (NULL,
    NaN) are not kept. Two aggregates and a window: DuckDB sorts out of core."""
    v = _column(column, 0.0)
    valid = con.execute(f"SELECT count({v}) FROM {source}").fetchall()[0][0]
    n = int(np.ceil(fraction * valid - 1e-9))
    sql = (f"SELECT * FROM {source} WHERE {v} IS NOT NULL QUALIFY row_number() OVER "
           f"(ORDER BY {v} DESC, CAST(clip_id AS VARCHAR) ASC) <= {n}")
    low = con.execute(f"SELECT min({v}) FROM ({sql})").fetchall()[0][0] if n else None
    return sql, (float(low) if low is not None else None)


def keep_top(df: pd.DataFrame, column: str, fraction: float) -> tuple[np.ndarray, float | None]:
    """`keep_top_sql` on a small frame: (mask of the rows kept, the smallest value kept)."""
    import duckdb
    import pyarrow as pa

    table = pa.Table.from_pandas(df.reset_index(drop=True).assign(_pos=np.arange(len(df))), preserve_index=False)
    con = duckdb.connect()
    try:
        con.register("frame", table)
        sql, low = keep_top_sql(con, "frame", column, fraction)
        kept = [r for r, in con.execute(f"SELECT _pos FROM ({sql})").fetchall()]
    finally:
        con.close()
    mask = np.zeros(len(df), bool)
    mask[kept] = True
    return mask, low
