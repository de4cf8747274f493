"""Clip quality scores: one scorer per file behind `Scorer`, all reading one decode of each source.

    score-clips clips.parquet -o scored/                       # offline scorers (+ cached models)

    from scorer import SCORERS, ClipFrames, score_source
    out = score_source("raw/a.mp4", rows, [SCORERS["motion"]()], flow=make_flow())   # rows: manifest dicts
"""

from .base import SHORT_SIDE, ClipFrames, Scorer, decode_size
from .flow import make_flow
from .registry import COLUMNS, MODEL_BASED, OFFLINE, SCORERS, make_scorer, select_scorers
from .stage import ScoreStage, score_source

__all__ = ["COLUMNS", "MODEL_BASED", "OFFLINE", "SCORERS", "SHORT_SIDE", "ClipFrames", "ScoreStage", "Scorer",
           "decode_size", "make_flow", "make_scorer", "score_source", "select_scorers"]
