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
    """Seconds spent in the last call of each stage (a whole batch), and totals for throughput."""

    pre: float = 0.0
    infer: float = 0.0
    post: float = 0.0
    batch: int = 1  # windows in the last call
    frames: int = 0  # windows denoised in all
    calls: int = 0  # backend calls in all
    total: dict[str, float] = field(default_factory=lambda: {"pre": 0.0, "infer": 0.0, "post": 0.0})

    def record(self, pre: float, infer: float, post: float, batch: int = 1) -> None:
        self.pre, self.infer, self.post, self.batch = pre, infer, post, batch
        self.frames += batch
        self.calls += 1
        for k, v in (("pre", pre), ("infer", infer), ("post", post)):
            self.total[k] += v

    def fps(self, stage: str = "infer") -> float:
        """Frames per second of one stage alone (its own throughput, batches included)."""
        return self.frames / self.total[stage] if self.total[stage] > 0 else 0.0


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
        return self._run(self.buffer.push(frame))

    def push_many(self, frames: Sequence[Frame]) -> list[Frame]:
        """Add several frames; the windows that become ready go to the backend as one batch (a
        backend with lanes denoises them at once). Same output as pushing them one by one."""
        return self._run([w for f in frames for w in self.buffer.push(f)])

    def flush(self) -> list[Frame]:
        """At the end of a stream: denoise the frames still waiting for look-ahead."""
        out = self._run(self.buffer.flush())
        self._planes.clear()
        return out

    def denoise_window(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """K frames (H, W, 3) uint8 RGB, oldest -> newest -> the denoised target frame, same shape."""
        if len(frames) != self.backend.frames:
            raise ValueError(f"need {self.backend.frames} frames, got {len(frames)}")
        t0 = time.perf_counter()
        x = self._assemble([[self._plane(f) for f in frames]])
        return self._infer_post(x, frames[0].shape[:2], t0)[0]

    def _run(self, ready: list[tuple[Frame, list[Frame]]]) -> list[Frame]:
        """Denoise (target, window) pairs, one backend call per run of same-size windows."""
        done: list[Frame] = []
        limit = getattr(self.backend, "max_batch", None) or len(ready)
        while ready:
            shape = ready[0][0].pixels.shape
            n = next((i for i, (o, _) in enumerate(ready) if o.pixels.shape != shape), len(ready))
            n = min(n, limit)
            group, ready = ready[:n], ready[n:]
            t0 = time.perf_counter()
            x = self._assemble([[self._plane(f.pixels, (f.source, f.segment, f.index)) for f in w] for _, w in group])
            images = self._infer_post(x, shape[:2], t0)
            done += [o.with_pixels(img) for (o, _), img in zip(group, images)]
        return done

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
            while len(self._planes) > 3 * self.backend.frames + 2:
                self._planes.popitem(last=False)
        return plane

    def _assemble(self, windows: list[list[np.ndarray]]) -> np.ndarray:
        """Windows of planes -> the (N, 3K, Hp, Wp) input buffer (reused while the shape holds)."""
        shape = (len(windows), 3 * len(windows[0]), *windows[0][0].shape[1:])
        if self._input is None or self._input.shape != shape:
            self._input = np.empty(shape, np.float32)
        for n, planes in enumerate(windows):
            for k, p in enumerate(planes):
                self._input[n, 3 * k : 3 * k + 3] = p
        return self._input

    def _infer_post(self, x: np.ndarray, hw: tuple[int, int], t0: float) -> list[np.ndarray]:
        t1 = time.perf_counter()
        y = self.backend.infer(x)
        t2 = time.perf_counter()
        h, w = hw
        out = []
        for row in y:
            img = row[:, :h, :w] if y.flags.writeable else row[:, :h, :w].copy()  # in place on the backend buffer
            np.multiply(img, 255.0, out=img)
            np.add(img, 0.5, out=img)
            np.clip(img, 0.0, 255.0, out=img)
            out.append(np.ascontiguousarray(img.transpose(1, 2, 0), dtype=np.uint8))  # x+0.5 truncated == rounded
        self.times.record(t1 - t0, t2 - t1, time.perf_counter() - t2, len(out))
        return out


def _reflect(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    """The n rows/cols after the end of ``a`` along axis, mirrored without repeating the edge."""
    size = a.shape[axis]
    idx = np.array([size - 2 - (i % max(size - 1, 1)) for i in range(n)]).clip(0, size - 1)
    return np.take(a, idx, axis=axis)
