"""Repeats, medians and spreads: the one rule behind every figure a bench prints.

A bench runs its baseline and its own path several times each, alternating (A B, B A, A B, ...) so that a
slower moment of a shared machine hits both sides alike, and prints for each side and for their ratio the
median and the spread (min-max) over the repeats. A ratio is taken per repeat, between the two runs that sat
next to each other, and then its median and spread are taken: a reader who runs the command again should land
inside the printed spread, or know that the machine was not the same.

    from _stats import interleave, per_repeat, spread
    runs = interleave(3, {"baseline": run_baseline, "ours": run_ours})  # {name: [result per repeat]}
    base, ours = spread(runs["baseline"]), spread(runs["ours"])
    print(f"baseline {base.text('{:.2f}', ' s')}, ours {ours.text('{:.2f}', ' s')}, "
          f"ratio {per_repeat(runs['baseline'], runs['ours']).text()}")
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Spread:
    """The values of one figure over the repeats: its median and its range."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    @property
    def rel(self) -> float:
        """(max - min) / median: how far apart the repeats lie, as a fraction of the figure."""
        return (self.hi - self.lo) / abs(self.median) if self.median else 0.0

    def text(self, fmt: str = "{:.2f}", unit: str = "") -> str:
        """'2.87 (2.60-3.01)' with `unit` after the median; a single value is printed alone."""
        med = fmt.format(self.median) + unit
        if len(self.values) == 1:
            return med
        return f"{med} ({fmt.format(self.lo)}-{fmt.format(self.hi)})"


def spread(values: Iterable[float]) -> Spread:
    vals = tuple(float(v) for v in values)
    if not vals:
        raise ValueError("no values: a figure needs at least one repeat")
    return Spread(vals)


def per_repeat(a: Iterable[float], b: Iterable[float]) -> Spread:
    """a[k] / b[k] for each repeat k (the runs measured side by side), as a Spread."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} values against {len(b)}: a ratio pairs the runs of one repeat")
    return spread(x / y for x, y in zip(a, b))


def interleave(repeats: int, runs: dict[str, Callable[[], T]]) -> dict[str, list[T]]:
    """Call every run once per repeat, in the given order on even repeats and reversed on odd ones (A B, B A,
    ...), so neither side always goes first; returns {name: [result of each repeat]}."""
    if repeats < 1:
        raise ValueError("--repeats must be at least 1")
    out: dict[str, list[T]] = {name: [] for name in runs}
    names = list(runs)
    for k in range(repeats):
        for name in (names if k % 2 == 0 else names[::-1]):
            out[name].append(runs[name]())
    return out


def load_average() -> str:
    """The machine's 1-minute load average and its CPU count, printed beside every figure."""
    try:
        load = f"{os.getloadavg()[0]:.2f}"
    except OSError:
        load = "unknown"
    return f"{os.cpu_count()} CPUs, load average {load}"


def repeats_note(repeats: int, alternating: bool = True) -> str:
    """The legend a bench prints above its figures."""
    if repeats == 1:
        return "1 run per side (no spread: pass --repeats N for one)"
    return f"median (min-max) over {repeats} repeats" + (", the sides alternating" if alternating else "")
