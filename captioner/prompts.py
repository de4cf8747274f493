"""Versioned prompt files: `prompts/<prompt_id>.txt`, rendered per clip with its metadata.

A template may use `{duration}`, `{num_frames}` (frames shown to the model), `{clip_frames}`, `{fps}`,
`{width}`, `{height}`, `{start_sec}`, `{end_sec}` and any other manifest column (`{meta_source}`, ...).
Released prompts are never edited: a changed prompt is a new file (`detailed_v2.txt`), so `prompt_id`
identifies the exact text every caption was made with.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"


class PromptError(ValueError):
    """A prompt that cannot be loaded or rendered, with a one-line reason."""


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    template: str

    def fields(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.template) if f}

    def render(self, **values) -> str:
        missing = sorted(f for f in self.fields() if f.split(".")[0].split("[")[0] not in values)
        if missing:
            raise PromptError(f"prompt {self.prompt_id}: no value for {{{missing[0]}}}")
        return self.template.format(**values).strip()


def available() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))


def load_prompt(name: str) -> Prompt:
    """A prompt id from `prompts/` or a path to a .txt file (its stem becomes the prompt_id)."""
    path = Path(name)
    if path.suffix == ".txt" and path.exists():
        return Prompt(path.stem, path.read_text(encoding="utf-8"))
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.exists():
        raise PromptError(f"unknown prompt {name!r}; available: {', '.join(available()) or 'none'}")
    return Prompt(name, path.read_text(encoding="utf-8"))


def clip_values(row: dict, num_frames: int) -> dict:
    """The values a template can use for one manifest row."""
    values = {k: v for k, v in row.items() if isinstance(k, str)}
    values.update(duration=float(row["end_sec"]) - float(row["start_sec"]), num_frames=int(num_frames),
                  clip_frames=int(row["num_frames"]))
    return values
