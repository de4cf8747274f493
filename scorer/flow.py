"""Optical flow between luma frames: OpenCV DIS by default (CPU, no weights), RAFT from torchvision by path.

Both take (P, H, W) uint8 luma pairs and return (P, H, W, 2) float32 flow in pixels (+x: content moves right,
+y: content moves down). DIS at its `fast` preset on a 456x256 frame takes a few milliseconds per pair and
follows translations of tens of pixels; RAFT (`--flow-model raft_large.pth`, a torchvision state dict) is the
learned alternative where a GPU is at hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class DISFlow:
    name = "dis"

    def __init__(self, preset: str = "fast"):
        self.preset = preset
        self._dis = None

    def _engine(self):
        if self._dis is None:
            import cv2

            presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                       "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
            self._dis = cv2.DISOpticalFlow_create(presets[self.preset])
        return self._dis

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        dis = self._engine()
        out = [dis.calc(np.ascontiguousarray(a), np.ascontiguousarray(b), None) for a, b in zip(first, second)]
        return np.stack(out).astype(np.float32, copy=False)

    def describe(self) -> dict:
        return {"flow": f"dis-{self.preset}"}

    def __getstate__(self):  # the OpenCV object does not pickle; a worker makes its own
        return {"preset": self.preset, "_dis": None}


class RAFTFlow:
    """torchvision's RAFT (large or small, told apart by the state dict's keys) from a local weights file."""

    name = "raft"

    def __init__(self, path, device: str | None = None, updates: int = 12):
        self.path = str(path)
        self.device = device
        self.updates = int(updates)
        self.model = None

    def check(self) -> None:
        if not Path(self.path).is_file():
            raise ValueError(f"--flow-model {self.path}: no such file (a torchvision RAFT state dict, .pth)")

    def load(self) -> "RAFTFlow":
        import torch
        from torchvision.models.optical_flow import raft_large, raft_small

        self.check()
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        for make in (raft_large, raft_small):
            model = make(weights=None, progress=False)
            try:
                model.load_state_dict(state)
                break
            except RuntimeError:
                continue
        else:
            raise ValueError(f"--flow-model {self.path}: not a torchvision RAFT (large or small) state dict")
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        return self

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if self.model is None:
            self.load()
        p, h, w = first.shape
        ph, pw = (-h) % 8, (-w) % 8  # RAFT wants sides divisible by 8

        def prep(x: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(x)).float().div(127.5).sub(1.0)  # [-1, 1]
            t = t[:, None].expand(-1, 3, -1, -1)  # luma as grey RGB
            return F.pad(t, (0, pw, 0, ph), mode="replicate").to(self.device)

        with torch.inference_mode():
            flows = self.model(prep(first), prep(second), num_flow_updates=self.updates)[-1]
        return flows[:, :, :h, :w].permute(0, 2, 3, 1).float().cpu().numpy()

    def describe(self) -> dict:
        return {"flow": f"raft:{Path(self.path).name}", "flow_updates": self.updates}

    def __getstate__(self):  # the model is loaded where it runs
        return {**self.__dict__, "model": None}


def make_flow(model: str | None = None, device: str | None = None):
    """DIS when `model` is None or "dis"; else a torchvision RAFT state dict at that path."""
    if model in (None, "", "dis"):
        return DISFlow()
    return RAFTFlow(model, device=device)
