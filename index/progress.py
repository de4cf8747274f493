"""Progress a user can see anywhere: a bar on a terminal, a steady progress line in a log file or a pipe.

    with Progress(total=40, label="split", unit="videos") as bar:
        bar.advance(1, "raw/a.mp4")

On a terminal (stderr is a TTY) it is a rich bar. Otherwise it prints a line every `interval` seconds
(SHOTCAP_PROGRESS_INTERVAL, default 30) and one at the end:
`split: 12/40 videos (30%), 0.81/s, ETA 35 s`.
"""

from __future__ import annotations

import os
import sys
import time


def _duration(sec: float) -> str:
    if sec < 90:
        return f"{sec:.0f} s"
    if sec < 5400:
        return f"{sec / 60:.0f} min"
    return f"{sec / 3600:.1f} h"


class Progress:
    def __init__(self, total: int | None, label: str, unit: str = "units", enabled: bool = True,
                 interval: float | None = None, stream=None):
        self.total, self.label, self.unit = (int(total) if total is not None else None), label, unit
        self.enabled = enabled and (total is None or total > 0)  # None: not known up front (a streamed input)
        self.stream = stream or sys.stderr
        self.interval = float(interval if interval is not None else os.environ.get("SHOTCAP_PROGRESS_INTERVAL", 30))
        self.done = 0
        self.bar = None

    def __enter__(self):
        self.start = self.last = time.monotonic()
        if self.enabled and self.total is not None and getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TextColumn(self.unit),
                           TimeRemainingColumn(), TextColumn("{task.description}"),
                           console=Console(file=self.stream), transient=False)
            self.bar.__enter__()
            self.task = self.bar.add_task("", total=self.total)
        return self

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        if self.total is None:
            return f"{self.label}: {self.done} {self.unit}, {rate:.2f}/s"
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta_text = _duration(eta) if eta != float("inf") else "unknown"
        return (f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.2f}/s, "
                f"ETA {eta_text}")

    def advance(self, n: int = 1, label: str = "") -> None:
        self.done += int(n)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, advance=n, description=os.fsdecode(label)[-40:])
            return
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            print(self.line(), file=self.stream, flush=True)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        elif self.enabled and exc[0] is None and self.done:
            print(self.line(), file=self.stream, flush=True)
        return False
