"""Synthetic videos with exact ground truth: textured shots with moving shapes, hard cuts, fades, dissolves.

Used by the tests, the benchmarks and the demo. A layout is a list of shots and the transitions between
them; the returned `Truth` gives the frame ranges that belong to shots and the boundaries in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .video import write_video

COLOURS = {
    "red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40),
    "magenta": (210, 50, 200), "cyan": (40, 210, 220), "white": (240, 240, 240), "orange": (245, 140, 30),
}


@dataclass
class ShotSpec:
    frames: int
    seed: int = 0
    motion: str = "normal"  # "normal", "fast" (large moves and a camera pan: no cut inside)
    shape_colour: str | None = None  # None: from the seed
    direction: tuple[float, float] | None = None  # shape velocity in pixels/frame; None: from the seed


@dataclass
class Truth:
    fps: float
    num_frames: int
    shots: list[tuple[int, int]]  # [start_frame, end_frame) of pure shot content
    hard_cuts: list[float] = field(default_factory=list)  # seconds
    gradual: list[tuple[float, float]] = field(default_factory=list)  # (start_sec, end_sec) of transitions

    def boundaries(self) -> list[tuple[str, float]]:
        """('hard', t) and ('gradual', centre) pairs in time order."""
        out = [("hard", t) for t in self.hard_cuts] + [("gradual", (a + b) / 2) for a, b in self.gradual]
        return sorted(out, key=lambda x: x[1])


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A smooth coloured texture (a few random sinusoids) distinct for each seed."""
    y, x = np.mgrid[0:h * 2, 0:w * 2].astype(np.float32)
    base = rng.uniform(30, 200, size=3)
    img = np.empty((h * 2, w * 2, 3), np.float32)
    for c in range(3):
        fx, fy = rng.uniform(0.5, 4, size=2) * 2 * np.pi / np.array([w, h])
        ph = rng.uniform(0, 2 * np.pi)
        img[..., c] = base[c] + 45 * np.sin(fx * x + fy * y + ph) + 20 * np.cos(fy * 1.7 * x - fx * 0.6 * y)
    return np.clip(img, 0, 255)


class _ShotRenderer:
    def __init__(self, spec: ShotSpec, w: int, h: int):
        rng = np.random.default_rng(spec.seed)
        self.w, self.h, self.spec = w, h, spec
        self.bg = _background(rng, w, h)
        names = list(COLOURS)
        self.colour = np.array(COLOURS[spec.shape_colour or names[int(rng.integers(len(names)))]], np.float32)
        self.size = max(6, int(min(w, h) * rng.uniform(0.15, 0.25)))
        self.pos = np.array([rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h], np.float32)
        speed = 3.0 if spec.motion == "normal" else 9.0
        vel = spec.direction if spec.direction is not None else rng.uniform(-1, 1, size=2) * speed
        self.vel = np.array(vel, np.float32)
        self.pan = np.array([2.5, 1.0] if spec.motion == "fast" else [0.4, 0.2], np.float32)
        self.t = 0

    def next(self) -> np.ndarray:
        w, h, t = self.w, self.h, self.t
        ox = int(t * self.pan[0]) % w
        oy = int(t * self.pan[1]) % h
        img = self.bg[oy:oy + h, ox:ox + w].copy()
        p = self.pos + self.vel * t
        if self.spec.direction is None:  # bounce inside the frame
            span = np.array([w - self.size, h - self.size], np.float32)
            q = p % (2 * span)
            p = np.where(q > span, 2 * span - q, q)
        x0, y0 = int(p[0]), int(p[1])
        if self.spec.direction is not None:
            x0, y0 = x0 - self.size // 2, y0 - self.size // 2
        xa, ya = max(x0, 0), max(y0, 0)
        xb, yb = min(x0 + self.size, w), min(y0 + self.size, h)
        if xb > xa and yb > ya:
            img[ya:yb, xa:xb] = self.colour
        self.t += 1
        return img


def render(shots: list[ShotSpec | int], transitions: list[tuple[str, int] | str] | None = None,
           size: tuple[int, int] = (320, 180), fps: float = 25.0) -> tuple[np.ndarray, Truth]:
    """Frames (T, H, W, 3) uint8 and their ground truth. transitions[i] joins shots i and i+1:
    "cut", ("fade", n) through black, or ("dissolve", n) cross-fade; n transition frames belong to no shot."""
    specs = [s if isinstance(s, ShotSpec) else ShotSpec(frames=int(s), seed=i + 1) for i, s in enumerate(shots)]
    trans = [("cut", 0) if t == "cut" else tuple(t) for t in (transitions or ["cut"] * (len(specs) - 1))]
    if len(trans) != len(specs) - 1:
        raise ValueError("need one transition between each pair of shots")
    w, h = size
    out: list[np.ndarray] = []
    truth = Truth(fps=fps, num_frames=0, shots=[])
    renderers = [_ShotRenderer(s, w, h) for s in specs]
    for i, (spec, r) in enumerate(zip(specs, renderers)):
        start = len(out)
        out.extend(r.next() for _ in range(spec.frames))
        truth.shots.append((start, len(out)))
        if i == len(specs) - 1:
            break
        kind, n = trans[i]
        if kind == "cut":
            truth.hard_cuts.append(len(out) / fps)
            continue
        a, b = len(out), len(out) + n
        nxt = renderers[i + 1]
        for k in range(n):
            alpha = (k + 1) / (n + 1)
            if kind == "dissolve":
                out.append((1 - alpha) * r.next() + alpha * nxt.next())
            elif kind == "fade":
                out.append(r.next() * max(0.0, 1 - 2 * alpha) if alpha < 0.5 else nxt.next() * (2 * alpha - 1))
            else:
                raise ValueError(f"unknown transition {kind!r}")
        truth.gradual.append((a / fps, b / fps))
    truth.num_frames = len(out)
    frames = np.clip(np.stack(out), 0, 255).astype(np.uint8)
    return frames, truth


def make_video(path, shots, transitions=None, size=(320, 180), fps: float = 25.0) -> Truth:
    """Render and write an mp4 (H.264); returns the ground truth."""
    frames, truth = render(shots, transitions, size=size, fps=fps)
    write_video(path, frames, fps)
    return truth


def sample_layout(seed: int, seconds: float = 12.0, fps: float = 25.0) -> tuple[list[ShotSpec], list]:
    """A random but reproducible mix of shot lengths, hard cuts, fades, dissolves and fast motion."""
    rng = np.random.default_rng(seed)
    shots, trans, total = [], [], 0
    while total < seconds * fps:
        n = int(rng.integers(int(1.5 * fps), int(4.5 * fps)))
        motion = "fast" if rng.random() < 0.25 else "normal"
        shots.append(ShotSpec(frames=n, seed=int(rng.integers(1 << 30)), motion=motion))
        total += n
        r = rng.random()
        trans.append("cut" if r < 0.6 else (("fade" if r < 0.8 else "dissolve"), int(rng.integers(8, 16))))
    return shots, trans[:-1]


def make_sample_videos(out_dir, count: int = 3, seconds: float = 12.0, size=(320, 180),
                       fps: float = 25.0) -> dict[str, Truth]:
    """A folder of reproducible sample videos (the demo's input); returns {file name: truth}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truths = {}
    for i in range(count):
        shots, trans = sample_layout(i, seconds, fps)
        name = f"sample_{i:02d}.mp4"
        truths[name] = make_video(out_dir / name, shots, trans, size=size, fps=fps)
    return truths
