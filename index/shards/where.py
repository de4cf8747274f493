"""`--where`: a small filter language over manifest columns, parsed here and evaluated on whole columns.

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

Nothing is evaluated as Python: the text becomes a small tree of these nodes and each node is a pandas
operation on a column. Columns are checked against the manifest before any work: an unknown name is a
usage error naming the nearest column; text compares only with text (== != in), numbers with numbers.
A clip with no value (NaN, None) in a column makes a comparison on it unknown, and unknowns combine as in SQL:
`unknown or true` is true, `unknown and false` is false, `not unknown` is unknown, and a clip whose whole
filter is unknown is not kept ("unknown" is never "kept").

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

    def mask(self, df: pd.DataFrame) -> np.ndarray:
        """Rows that pass, as a boolean array (a row whose result is unknown does not pass)."""
        value, known = self._eval(df)
        return value & known

    def _eval(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(value, known) per row, with SQL's three-valued logic; value is False where unknown."""
        k, a = self.kind, self.args
        if k in ("and", "or"):
            (va, ka), (vb, kb) = a[0]._eval(df), a[1]._eval(df)
            if k == "and":  # false if either side is known false
                return va & vb, (ka & kb) | (ka & ~va) | (kb & ~vb)
            return va | vb, (ka & kb) | (ka & va) | (kb & vb)  # true if either side is known true
        if k == "not":
            v, known = a[0]._eval(df)
            return ~v & known, known
        col = a[1] if k == "cmp" else a[0]
        known = df[col].notna().to_numpy()
        if k == "bool":
            value = df[col].fillna(False).astype(bool).to_numpy()
        elif k == "in":
            hit = df[col].isin(list(a[1])).to_numpy()
            value = ~hit if a[2] else hit
        else:
            op, _, lit = a
            s = df[col]
            if isinstance(lit, (int, float)) and not isinstance(lit, bool):
                s = pd.to_numeric(s, errors="coerce")
            value = getattr(s, op)(lit).fillna(False).to_numpy(dtype=bool)
        return value & known, known

    def thresholds(self) -> list[tuple[str, str, float]]:
        """(column, op, number) of every numeric comparison inside: the lines drawn on the card's histograms."""
        if self.kind in ("and", "or", "not"):
            return [t for a in self.args for t in a.thresholds()]
        if self.kind == "cmp" and isinstance(self.args[2], (int, float)) and not isinstance(self.args[2], bool):
            return [(self.args[1], self.args[0], float(self.args[2]))]
        return []


def _paren(node: Node, *kinds: str) -> str:
    return f"({node.text()})" if node.kind in kinds else node.text()


def _literal(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{v:g}" if isinstance(v, float) else str(v)


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
    def __init__(self, text: str, df: pd.DataFrame):
        self.text, self.df = text, df
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
            if text not in self.df.columns:
                raise self.error(nearest_column(text, self.df.columns), pos)
            return ("col", text), _kind_of(self.df[text]), pos
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


def parse_where(text: str, df: pd.DataFrame) -> Node:
    """The filter as a tree, checked against `df`'s columns; WhereError (one line) when it cannot be used."""
    return _Parser(text, df).parse()


def steps(node: Node) -> list[Node]:
    """The top-level `and` terms, in the order written: one step each in the retention table."""
    if node.kind == "and":
        return steps(node.args[0]) + steps(node.args[1])
    return [node]


def parse_keep_top(text: str, df: pd.DataFrame) -> tuple[str, float]:
    """`--keep-top COL:FRACTION` -> (column, fraction); a usage error when it cannot be used."""
    col, sep, frac = str(text).rpartition(":")
    try:
        fraction = float(frac)
    except ValueError:
        fraction = -1.0
    if not sep or not col or not 0 < fraction <= 1:
        raise WhereError(f"--keep-top {text!r}: write COLUMN:FRACTION with 0 < FRACTION <= 1 (aesthetic:0.8)")
    if col not in df.columns:
        raise WhereError(f"--keep-top {text!r}: {nearest_column(col, df.columns)}")
    if _kind_of(df[col]) != "number":
        raise WhereError(f"--keep-top {text!r}: {col} does not hold numbers")
    return col, fraction


def keep_top(df: pd.DataFrame, column: str, fraction: float) -> tuple[np.ndarray, float | None]:
    """The best `fraction` of the rows by `column` (ceil; ties broken by clip_id, so the cut is the same
    every run) and the smallest value kept. Rows without a value are not kept."""
    values = pd.to_numeric(df[column], errors="coerce")
    valid = values.notna().to_numpy()
    n = int(np.ceil(fraction * valid.sum() - 1e-9))
    order = pd.DataFrame({"v": values, "id": df["clip_id"].astype(str).to_numpy()}, index=df.index)[valid]
    order = order.sort_values(["v", "id"], ascending=[False, True], kind="stable").head(n)
    mask = df.index.isin(order.index)
    return mask, (float(order["v"].min()) if n else None)
