"""`camera_motion`: what the camera does, named from the flow field.

Each flow pair (see `scorer.flow`) is fitted with a global camera model over the pixels whose motion is
observable (`base.textured`), robustly (least squares, then again on the better-fitting half of them, so a
moving object does not pull the fit):

    u = tx + s * x - r * y        (x, y: pixel position from the frame centre)
    v = ty + s * y + r * x

- `static`: the median pixel moves less than STATIC px/frame (a moving object on a still background too);
- `zoom_in` / `zoom_out`: the divergence term s (as pixels per frame at the mean radius) beats translation;
  `zoom_in` means content grows (flow points outward);
- `pan_left` / `pan_right` / `tilt_up` / `tilt_down`: translation, by its larger axis. Directions are the
  camera's: `pan_right` turns the view right, so the content moves LEFT in the frame (tx < 0); `tilt_up`
  moves content DOWN (ty > 0, image y grows downward);
- `mixed` for a pair the model does not explain (residual above the fitted motion).

The clip's label: `shaky` when at least three moving pairs translate in directions that cancel out (their
mean translation under half their mean length), else the label of at least 60 % of the pairs, else `mixed`.
None for a one-frame clip.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .base import ClipFrames, Scorer

LABELS = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "shaky", "mixed")
STATIC = 0.25  # px/frame at the 256 short side: the median pixel of a still shot moves less
MAJORITY = 0.6
MIN_TEXTURE = 0.02  # share of observable pixels under which a pair counts as static
STEP = 8  # fit on every 8th pixel in each direction


def fit_camera(flow: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """One (H, W, 2) flow field -> {label, tx, ty, zoom, residual} (pixels per frame). `mask`: the pixels
    whose flow is observable (`base.textured`); the others are left out."""
    h, w = flow.shape[:2]
    still = {"label": "static", "tx": 0.0, "ty": 0.0, "zoom": 0.0, "residual": 0.0}
    seen = np.ones((h, w), bool) if mask is None else mask
    if seen.mean() < MIN_TEXTURE:
        return still  # (almost) nothing to see move
    mag = np.sqrt((flow[seen].astype(np.float64) ** 2).sum(axis=-1))
    if float(np.median(mag)) < STATIC:
        return still
    ys, xs = np.mgrid[0:h:STEP, 0:w:STEP]
    sel = seen[::STEP, ::STEP].ravel()
    x, y = xs.ravel()[sel] - (w - 1) / 2, ys.ravel()[sel] - (h - 1) / 2
    u, v = (flow[::STEP, ::STEP, c].astype(np.float64).ravel()[sel] for c in (0, 1))
    one, zero = np.ones_like(x), np.zeros_like(x)
    a = np.concatenate([np.stack([one, zero, x, -y], 1), np.stack([zero, one, y, x], 1)])  # (2N, 4)
    b = np.concatenate([u, v])
    keep = np.ones(len(x), bool)
    for _ in range(2):  # fit, then refit on the half of the pixels the first fit explains best
        rows = np.concatenate([keep, keep])
        params = np.linalg.lstsq(a[rows], b[rows], rcond=None)[0]
        err = np.hypot(*(a @ params - b).reshape(2, -1))
        keep = err <= np.median(err)
    tx, ty, s, _ = params
    radius = float(np.hypot(x, y).mean())
    trans, zoom = float(np.hypot(tx, ty)), float(abs(s) * radius)
    residual = float(err[keep].mean())
    if max(trans, zoom) < STATIC:
        label = "static"
    elif residual > max(trans, zoom):
        label = "mixed"
    elif zoom > trans:
        label = "zoom_in" if s > 0 else "zoom_out"
    elif abs(tx) >= abs(ty):
        label = "pan_right" if tx < 0 else "pan_left"
    else:
        label = "tilt_up" if ty > 0 else "tilt_down"
    return {"label": label, "tx": float(tx), "ty": float(ty), "zoom": float(s * radius), "residual": residual}


def clip_label(fits: list[dict]) -> str | None:
    """The clip's label from its pairs' fits (see the module docstring)."""
    if not fits:
        return None
    moving = [f for f in fits if f["label"] in ("pan_left", "pan_right", "tilt_up", "tilt_down", "mixed")]
    if len(moving) >= 3:
        t = np.array([[f["tx"], f["ty"]] for f in moving])
        if np.hypot(*t.mean(axis=0)) < 0.5 * np.hypot(t[:, 0], t[:, 1]).mean():
            return "shaky"
    label, count = Counter(f["label"] for f in fits).most_common(1)[0]
    return label if count >= MAJORITY * len(fits) else "mixed"


class CameraMotionScorer(Scorer):
    name = "camera_motion"
    columns = {"camera_motion": "string"}
    needs_flow = True

    def score(self, clip: ClipFrames) -> dict:
        return {"camera_motion": clip_label([fit_camera(f, m) for f, m in zip(clip.flows, clip.flow_mask)])}
