"""Metadata readers for `import-clips`: one published layout per file, behind `base.Importer`.

    from splitter.importers import make_importer
    for item in make_importer("panda70m").read("panda70m_training_2m.csv"): ...   # Span or Problem
"""

from __future__ import annotations

from .base import Importer, MetadataError, Problem, Span
from .internvid import InternVid
from .msrvtt import MSRVTT
from .opensora_csv import OpenSoraCSV
from .panda70m import Panda70M
from .video2dataset import Video2Dataset
from .webvid import WebVid

IMPORTERS: dict[str, type[Importer]] = {cls.name: cls for cls in
                                        (Panda70M, WebVid, MSRVTT, InternVid, OpenSoraCSV, Video2Dataset)}


def make_importer(name: str) -> Importer:
    if name not in IMPORTERS:
        raise MetadataError(f"unknown format {name!r}; choose one of: {', '.join(IMPORTERS)}")
    return IMPORTERS[name]()


__all__ = ["IMPORTERS", "Importer", "MetadataError", "Problem", "Span", "make_importer"]
