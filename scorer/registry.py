"""The scorer registry and the choice of scorers for a run.

`--scorers default` (the default): every offline scorer, plus `aesthetic` and `text_match` when their models
are already in the local cache (and, for text_match, the manifest has captions). `--scorers all`: every
scorer, nsfw included (text_match where the manifest has captions). A list names scorers or any of their
columns (`black_frac` means `brightness`).
"""

from __future__ import annotations

from .aesthetic import DEFAULT_MODEL as AESTHETIC_MODEL
from .aesthetic import AestheticScorer
from .base import Scorer
from .bpp import BppScorer
from .brightness import BrightnessScorer
from .camera import CameraMotionScorer
from .match import DEFAULT_MODEL as MATCH_MODEL
from .match import TextMatchScorer
from .motion import MotionScorer
from .nsfw import DEFAULT_MODEL as NSFW_MODEL
from .nsfw import NsfwScorer
from .sharpness import SharpnessScorer
from .text import TextScorer

SCORERS: dict[str, type[Scorer]] = {
    "motion": MotionScorer,
    "camera_motion": CameraMotionScorer,
    "sharpness": SharpnessScorer,
    "brightness": BrightnessScorer,
    "text_area": TextScorer,
    "bpp": BppScorer,
    "aesthetic": AestheticScorer,
    "text_match": TextMatchScorer,
    "nsfw": NsfwScorer,
}
OFFLINE = ("motion", "camera_motion", "sharpness", "brightness", "text_area", "bpp")
MODEL_BASED = ("aesthetic", "text_match", "nsfw")
ALIASES = {col: name for name, cls in SCORERS.items() for col in cls.columns} | {"text": "text_area"}

# every column score-clips can write, with its dtype (registered in index.record.STAGE_COLUMNS)
COLUMNS: dict[str, str] = {col: kind for cls in SCORERS.values() for col, kind in cls.columns.items()}


def make_scorer(name: str, aesthetic_model: str = AESTHETIC_MODEL, aesthetic_head: str = "auto",
                match_model: str = MATCH_MODEL, nsfw_model: str = NSFW_MODEL, device: str | None = None,
                batch_size: int = 32) -> Scorer:
    if name == "aesthetic":
        return AestheticScorer(aesthetic_model, aesthetic_head, device=device, batch_size=batch_size)
    if name == "text_match":
        return TextMatchScorer(match_model, device=device, batch_size=batch_size)
    if name == "nsfw":
        return NsfwScorer(nsfw_model, device=device, batch_size=batch_size)
    return SCORERS[name]()


def parse_names(spec: str) -> list[str] | str:
    """'default', 'all', or the scorer names of a comma list (columns mapped to their scorer), in registry
    order, with 'default' first when the list names it too ('default,aesthetic': the defaults and the
    aesthetic scorer, whether or not its model is cached); ValueError for a name that is neither."""
    spec = (spec or "default").strip()
    if spec in ("default", "all"):
        return spec
    names, default = set(), False
    for word in filter(None, (w.strip() for w in spec.split(","))):
        if word == "default":
            default = True
            continue
        if word not in ALIASES and word not in SCORERS:
            raise ValueError(f"unknown scorer {word!r}; choose from: {', '.join(SCORERS)} (or all, default)")
        names.add(ALIASES.get(word, word))
    if not names and not default:
        raise ValueError("--scorers names no scorer")
    if not names:
        return "default"
    return (["default"] if default else []) + [n for n in SCORERS if n in names]


def select_scorers(spec: str, has_caption: bool, nsfw_asked: bool = False, **options) -> list[Scorer]:
    """The scorers of a run (see the module docstring); `options` go to `make_scorer`. Explicitly named
    model-based scorers are returned whether or not their model is here: the caller `check()`s them."""
    names = parse_names(spec)
    if names == "all":  # text_match only where there are captions to match
        chosen = [make_scorer(n, **options) for n in SCORERS if n != "text_match" or has_caption]
    elif names == "default":
        chosen = [make_scorer(n, **options) for n in OFFLINE]
        for name in ("aesthetic", "text_match"):
            if name == "text_match" and not has_caption:
                continue
            scorer = make_scorer(name, **options)
            if scorer.available():
                chosen.append(scorer)
        if nsfw_asked:
            chosen.append(make_scorer("nsfw", **options))
    else:
        chosen = select_scorers("default", has_caption, **options) if "default" in names else []
        have = {s.name for s in chosen}
        chosen += [make_scorer(n, **options) for n in names if n != "default" and n not in have]
        if nsfw_asked and "nsfw" not in names:
            chosen.append(make_scorer("nsfw", **options))
    if any(s.name == "text_match" for s in chosen) and not has_caption:
        raise ValueError("text_match needs a caption column: run caption-videos first, or leave text_match out")
    return chosen
