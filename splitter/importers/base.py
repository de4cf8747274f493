"""What every metadata reader gives `import-clips`: spans of source videos, and problems found in the metadata itself.

A reader turns one published layout into `Span`s, streamed (a metadata file of millions of rows is never held):
which video (the dataset's id, or the metadata's own path to it), where the clip lies in it (seconds from the
video's first frame, or the whole file), its captions and its scores. A row that cannot be read (a malformed
timestamp, unequal list lengths, an end before its start) is a `Problem`: one line in failed.jsonl. A file that
is not the named format at all is a `MetadataError` (one line, exit 2) before any work.

Timestamps become frame ranges later, against each local video's own timestamps (`splitter.imports`): nothing
here knows a frame rate.
"""

from __future__ import annotations

import abc
import ast
import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Iterator

from index import storage
from index.engine import UsageError


class MetadataError(UsageError):
    """A metadata file that is not the named format (wrong columns, not CSV/JSON): one line, exit status 2."""


@dataclass
class Span:
    row: int  # position in the metadata (line of a CSV/JSONL file, entry of a JSON list): the manifest's order
    where: str  # the row as a person finds it: "line 12", "videos[7] (video7)"
    clip: int | None = None  # the span's place in its row, for a row of several clips (Panda-70M)
    source_id: str = ""  # the dataset's video id ('' when the metadata names a path instead)
    path: str | None = None  # the metadata's own path to the video (relative to --videos, or absolute/URL)
    start: float | None = None  # seconds from the video's first frame; None: its start
    end: float | None = None  # None: its end
    cut: bool | None = False  # True: the file is the clip already; None: decide from its length (see imports)
    captions: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # column name (meta_*) -> value


@dataclass
class Problem:
    row: int
    where: str
    reason: str  # one line
    source_id: str = ""
    path: str | None = None


class Importer(abc.ABC):
    """One published layout. Subclasses set `name`, `columns` (what `check` expects) and implement `read`."""

    name = ""
    dataset = ""  # caption_model of the imported captions (a user's --dataset-name replaces it)
    columns: tuple = ()  # the columns (or keys) the layout must have
    pairing = "id"  # "id": videos found by `Span.source_id`; "path": by `Span.path`
    help = ""

    def check(self, metadata) -> None:
        """Raise MetadataError when `metadata` is not this layout (read only its head)."""

    @abc.abstractmethod
    def read(self, metadata, work=None) -> Iterator[Span | Problem]:
        """Spans and problems, in metadata order, streamed. `work`: a folder the reader may write to (the
        videos a tar holds are extracted there)."""


# ---------------------------------------------------------------- shared parsing

_HMS = re.compile(r"^\s*(\d+):([0-5]?\d):([0-5]?\d(?:\.\d*)?)\s*$")
_ISO = re.compile(r"^\s*P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?\s*$")


class BadValue(ValueError):
    """A value of one row that cannot be read; its text is the row's one-line reason."""


def hms(text) -> float:
    """'H:MM:SS.mmm' (Panda-70M, InternVid's 'HH:MM:SS.mmm') -> seconds."""
    m = _HMS.match(str(text))
    if not m:
        raise BadValue(f"malformed timestamp {str(text)[:40]!r} (expected H:MM:SS.mmm)")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def iso_duration(text) -> float:
    """ISO 8601 duration ('PT00H00M11S', WebVid's) -> seconds."""
    m = _ISO.match(str(text))
    if not m or not any(m.groups()) or str(text).strip().endswith("T"):
        raise BadValue(f"malformed duration {str(text)[:40]!r} (expected ISO 8601, e.g. PT00H00M11S)")
    d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return d * 86400 + h * 3600 + mi * 60 + s


def seconds(value, what: str) -> float:
    """A number of seconds (MSR-VTT's 'start time'), finite and >= 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BadValue(f"{what} is {str(value)[:40]!r}, not a number of seconds") from None
    if not math.isfinite(v) or v < 0:
        raise BadValue(f"{what} is {value!r}, must be a number of seconds >= 0")
    return v


def span_times(start: float, end: float) -> tuple[float, float]:
    if not end > start:
        raise BadValue(f"end {end:.3f} s is not after start {start:.3f} s")
    return start, end


def literal_list(text, what: str, plain: bool = False) -> list:
    """A Python or JSON list written in a CSV cell (Panda-70M's "[['0:00:00.000', '0:00:05.000'], ...]").
    JSON is tried first (numbers; and with `plain`, a list of quoted items that hold no quote of their own,
    as timestamps: a third of the time `ast.literal_eval` takes); anything else is read as a Python literal."""
    if isinstance(text, list):
        return text
    text = str(text)
    try:
        value = json.loads(text.replace("'", '"') if plain and '"' not in text and "\\" not in text else text)
        if isinstance(value, list):
            return value
    except ValueError:
        pass
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise BadValue(f"{what} is not a list ({str(text)[:40]!r})") from None
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise BadValue(f"{what} is not a list ({str(text)[:40]!r})")
    return value


def number(value) -> float | None:
    """A score as a float, None when empty or not a number (a score column is kept even where a row lacks it)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def meta_name(column: str) -> str:
    """A metadata column as a manifest column: 'Aesthetic_Score' -> 'meta_aesthetic_score'."""
    return "meta_" + re.sub(r"[^0-9a-z]+", "_", str(column).lower()).strip("_")


def text_lines(path) -> Iterator[str]:
    """The lines of a text file or object, streamed (a BOM dropped)."""
    with storage.open_read(storage.location(path)) as raw:
        f = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        yield from f


def csv_rows(path, name: str, required) -> Iterator[tuple[int, dict]]:
    """(line, {column: text}) of a CSV file, streamed; its header must hold `required` (MetadataError otherwise)."""
    reader = csv.reader(text_lines(path))
    header = _header(reader, path, name, required)
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        yield reader.line_num, dict(zip(header, row)) if len(row) == len(header) else {"__bad__": len(row)}


def check_csv(path, name: str, required) -> list[str]:
    return _header(csv.reader(text_lines(path)), path, name, required)


def _header(reader, path, name: str, required) -> list[str]:
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise MetadataError(f"{path}: empty file, not {name} metadata (expected columns: "
                            f"{', '.join(required)})") from None
    except csv.Error as e:
        raise MetadataError(f"{path}: not a CSV file ({e}); {name} metadata is a CSV") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise MetadataError(f"{path}: not {name} metadata: missing column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)} (expected columns: {', '.join(required)}; found: "
                            f"{', '.join(header[:12]) or 'none'})")
    return header


def jsonl_rows(path, name: str, required) -> Iterator[tuple[int, dict | None]]:
    """(line, object or None when the line is not a JSON object) of a JSONL file, streamed."""
    for n, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        yield n, obj if isinstance(obj, dict) else None


def check_jsonl(path, name: str, required) -> None:
    for n, obj in jsonl_rows(path, name, required):
        if obj is None:
            raise MetadataError(f"{path}: line {n} is not a JSON object; {name} metadata is JSON lines with keys "
                                f"{', '.join(required)}")
        missing = [c for c in required if c not in obj]
        if missing:
            raise MetadataError(f"{path}: not {name} metadata: line {n} lacks {', '.join(missing)} (expected keys: "
                                f"{', '.join(required)}; found: {', '.join(list(obj)[:12])})")
        return
    raise MetadataError(f"{path}: empty file, not {name} metadata (expected keys: {', '.join(required)})")
