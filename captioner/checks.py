"""Caption checks: a caption is cleaned, then either accepted or given flags (retried once, then recorded).

Flags: `empty`, `refusal`, `repetition`, `truncated` (stopped by the token budget), `too_short`.
Chat preambles ("Sure! Here is a description of the video:") and boilerplate openers ("The video shows",
"In this video, ") are stripped, not flagged.
"""

from __future__ import annotations

import re

_CHAT = r"(?:sure|certainly|okay|of course)[,.!]\s*"  # with its punctuation: "Sure-footed goats" stays
_HERE = (r"here(?:'s| is) (?:a|the) (?:\w+ ){0,2}(?:description|caption|summary)"
         r"(?: of (?:the|this) (?:video|clip))?\s*[:.]\s*")
_OPENER = (r"(?:(?:the|this) (?:video|clip|footage|scene|shot)(?: clip)? (?:shows|depicts|features|captures|"
           r"presents|displays|begins with|opens with)|in (?:the|this) (?:video|clip|footage|scene|shot),?)"
           r"\s*[:,-]?\s*")
BOILERPLATE = re.compile(rf"^\s*(?:{_CHAT})?(?:{_HERE})?(?:{_OPENER})?", re.IGNORECASE)
REFUSAL = re.compile(
    r"\b(?:i(?:'m| am) (?:sorry|unable|not able)|i can(?:not|'t) (?:help|assist|describe|provide|see|view)|"
    r"as an ai(?: language model)?|i do not have the ability|unable to (?:view|watch|process) (?:the )?video)",
    re.IGNORECASE)
MIN_WORDS = 3


def strip_boilerplate(text: str) -> str:
    text = " ".join(text.split())
    out = BOILERPLATE.sub("", text, count=1)
    if out and out != text:
        out = out[0].upper() + out[1:]
    return out.strip()


def _repetition(text: str, max_repeats: int = 3) -> bool:
    """A loop: some n-gram (1 to 8 words) repeated back to back more than `max_repeats` times,
    or a text whose words are mostly the same few words."""
    words = text.lower().split()
    for n in range(1, 9):
        for i in range(0, len(words) - n * (max_repeats + 1) + 1):
            gram = words[i:i + n]
            k = 1
            while words[i + k * n:i + (k + 1) * n] == gram:
                k += 1
            if k > max_repeats:
                return True
    if len(words) >= 24 and len(set(words)) / len(words) < 0.25:
        return True
    # character loops without spaces ("abcabcabcabc")
    return bool(re.search(r"(.{2,20}?)\1{5,}", text))


def check_caption(text: str, hit_token_limit: bool = False) -> tuple[str, list[str]]:
    """Clean a raw caption and list what is wrong with it (an empty list: keep it)."""
    clean = strip_boilerplate(text or "")
    flags: list[str] = []
    if not clean:
        return "", ["empty"]
    if REFUSAL.search(clean):
        flags.append("refusal")
    if _repetition(clean):
        flags.append("repetition")
    if hit_token_limit:
        flags.append("truncated")
    if len(clean.split()) < MIN_WORDS and "empty" not in flags:
        flags.append("too_short")
    return clean, flags
