"""Frames in, denoised frames out: window assembly, pre/post-processing and one backend call.

Pre-processing (the only place it happens): K frames (H, W, 3) uint8 RGB -> (1, 3K, Hp, Wp)
float32 in [0, 1], padded by reflection at the bottom/right to the network's stride. Each frame is
converted once and reused by the K windows it appears in. Post-processing: crop back to (H, W),
clip, round to uint8 RGB.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .backends import Backend
from .buffer import TemporalBuffer
from .errors import ConfigError
from .frame import Frame

log = logging.getLogger(__name__)


@dataclass
class StageTimes:
    """Seconds spent in the last call of each stage (for status lines and benchmarks)."""

    pre: float = 0.0
    infer: float = 0.0
    post: float = 0.0
    history: dict[str, list[float]] = field(default_factory=lambda: {"pre": [], "infer": [], "post": []})

    def record(self, pre: float, infer: float, post: float, keep: int = 1000) -> None:
        self.pre, self.infer, self.post = pre, infer, post
        for k, v in (("pre", pre), ("infer", infer), ("post", post)):
            h = self.history[k]
            h.append(v)
            if len(h) > keep:
                del h[: len(h) - keep]


class Denoiser:
    def __init__(self, backend: Backend, window: str | None = None) -> None:
        model_window = "causal" if backend.target == backend.frames - 1 else "centered"
        if window is not None and window != model_window:
            raise ConfigError(f"the model has a {model_window} window but {window} was asked for; "
                              f"use a {window} model (e.g. lite-causal)")
        self.backend = backend
        self.window = model_window
        self.buffer = TemporalBuffer(backend.frames, backend.target)
        self.times = StageTimes()
        self._planes: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self._input: np.ndarray | None = None

    @property
    def latency_frames(self) -> int:
        """Frames of look-ahead the window adds."""
        return self.buffer.lookahead

    def push(self, frame: Frame) -> list[Frame]:
        """Add one frame; return the denoised frames that became ready (0, 1, or more after a reset)."""
        return [self._run(out, window) for out, window in self.buffer.push(frame)]

    def flush(self) -> list[Frame]:
        """At the end of a stream: denoise the frames still waiting for look-ahead."""
        out = [self._run(o, w) for o, w in self.buffer.flush()]
        self._planes.clear()
        return out

    def denoise_window(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """K frames (H, W, 3) uint8 RGB, oldest -> newest -> the denoised target frame, same shape."""
        if len(frames) != self.backend.frames:
            raise ValueError(f"need {self.backend.frames} frames, got {len(frames)}")
        t0 = time.perf_counter()
        x = self._assemble([self._plane(f) for f in frames], frames[0].shape[:2])
        return self._infer_post(x, frames[0].shape[:2], t0)

    def _run(self, out: Frame, window: list[Frame]) -> Frame:
        t0 = time.perf_counter()
        planes = [self._plane(f.pixels, (f.source, f.segment, f.index)) for f in window]
        x = self._assemble(planes, out.pixels.shape[:2])
        return out.with_pixels(self._infer_post(x, out.pixels.shape[:2], t0))

    def _plane(self, pixels: np.ndarray, key: tuple[str, int, int] | None = None) -> np.ndarray:
        """(H, W, 3) uint8 -> (3, Hp, Wp) float32 in [0, 1], reflect-padded to the stride; cached by key."""
        if key is not None and key in self._planes:
            return self._planes[key]
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"frames must be (H, W, 3) uint8 RGB, got {pixels.shape} {pixels.dtype}")
        h, w = pixels.shape[:2]
        s = self.backend.stride
        hp, wp = -(-h // s) * s, -(-w // s) * s
        plane = np.empty((3, hp, wp), np.float32)
        np.multiply(pixels.transpose(2, 0, 1), np.float32(1 / 255), out=plane[:, :h, :w], casting="unsafe")
        if hp > h:
            plane[:, h:, :w] = _reflect(plane[:, :h, :w], hp - h, axis=1)
        if wp > w:
            plane[:, :, w:] = _reflect(plane[:, :, :w], wp - w, axis=2)
        if key is not None:
            self._planes[key] = plane
            while len(self._planes) > 2 * self.backend.frames + 2:
                self._planes.popitem(last=False)
        return plane

    def _assemble(self, planes: list[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
        shape = (1, 3 * len(planes), *planes[0].shape[1:])
        if self._input is None or self._input.shape != shape:
            self._input = np.empty(shape, np.float32)
        for k, p in enumerate(planes):
            self._input[0, 3 * k : 3 * k + 3] = p
        return self._input

    def _infer_post(self, x: np.ndarray, hw: tuple[int, int], t0: float) -> np.ndarray:
        t1 = time.perf_counter()
        y = self.backend.infer(x)
        t2 = time.perf_counter()
        h, w = hw
        img = y[0, :, :h, :w] if y.flags.writeable else y[0, :, :h, :w].copy()  # in place on the backend buffer
        np.multiply(img, 255.0, out=img)
        np.add(img, 0.5, out=img)
        np.clip(img, 0.0, 255.0, out=img)
        out = np.ascontiguousarray(img.transpose(1, 2, 0), dtype=np.uint8)  # x+0.5 truncated == rounded
        self.times.record(t1 - t0, t2 - t1, time.perf_counter() - t2)
        return out


def _reflect(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    """The n rows/cols after the end of ``a`` along axis, mirrored without repeating the edge."""
    size = a.shape[axis]
    idx = np.array([size - 2 - (i % max(size - 1, 1)) for i in range(n)]).clip(0, size - 1)
    return np.take(a, idx, axis=axis)
