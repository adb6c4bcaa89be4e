"""Frames in, denoised frames out: window assembly, pre/post-processing and one backend call.

Pre- and post-processing are ``planes``'s (the network's ``Layout``): each frame becomes one block
(RGB in [0, 1], then its noise maps for a noise-aware network, reflect-padded to the stride),
converted once, into a slot of the :class:`PlaneSlab`, and the windows of a stream in order are
views of it (no window is copied together); only windows at stream edges or of interleaved
cameras are assembled. The noise maps come from a :class:`noise_level.NoiseTracker` that re-reads
the stream every few frames, so they follow the camera's gain. Post-processing: crop back to
(H, W), clip, round to uint8 RGB.

On a GPU backend (``cuda``, ``tensorrt``: those with ``device_windows``) the same steps run on the
GPU instead (``backends.cuda_windows.GpuWindowRunner``): each frame goes up once as uint8, its plane stays
there while windows need it, a batch of windows (cameras of one size) is one network run, and only
the uint8 frames come back. Stage times then read: pre = uploads, infer = network with the window
gather and post-processing, post = 0.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from .backends import Backend, DeviceBackend
from .buffer import TemporalBuffer
from .errors import ConfigError
from .frame import Frame, check_pixels
from .noise_level import NoiseTracker
from .planes import Layout, frame_block, to_uint8_rgb

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
    def __init__(self, backend: Backend, window: str | None = None, slab_frames: int | None = None,
                 strength: float = 1.0) -> None:
        """``slab_frames``: frame blocks the slab holds (default 3K + 2: room for a batch of K frames
        between compactions); a caller that pushes one frame at a time with many cameras (the
        multi-process runtime's lanes) gives K + 3, a third of the memory for a few plane copies.
        ``strength``: the noise reading a noise-aware network is told is the measured one times this
        (``ModelConfig.strength``)."""
        model_window = "causal" if backend.target == backend.frames - 1 else "centered"
        if window is not None and window != model_window:
            raise ConfigError(f"the model has a {model_window} window but {window} was asked for; "
                              f"use a {window} model (e.g. lite-causal)")
        self.backend = backend
        self.window = model_window
        self.layout = Layout.of(backend)
        self.noise = NoiseTracker(gain=strength) if self.layout.noise_planes else None
        if strength != 1.0 and self.noise is None:
            raise ConfigError(f"strength {strength:g} needs a noise-aware model (one with noise maps); "
                              f"{backend.name} has none")
        self._readings: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()  # by frame key
        self.buffer = TemporalBuffer(backend.frames, backend.target)
        self.times = StageTimes()
        self._slab = PlaneSlab(max(slab_frames or 3 * backend.frames + 2, backend.frames + 1))
        self._input: np.ndarray | None = None
        caps = backend.capabilities
        self._gpu = cast(DeviceBackend, backend).window_runner() if caps.device_windows else None
        self._epoch = next(_EPOCHS)  # in the GPU runner's keys: a new one per stream (flush), per Denoiser
        self.assembled = 0  # windows copied into the assembly buffer (not a view of the slab)
        self.generation = 0  # stamped on every frame out (Frame.generation); `run --adapt` raises it

    def swap(self, backend: Backend, generation: int) -> Backend:
        """Run the next windows on ``backend`` (same window layout, a CPU backend), stamping their
        frames with ``generation``; returns the backend replaced. Frames waiting for look-ahead stay:
        no frame is lost or repeated (``run --adapt`` calls this between two frames)."""
        new = Layout.of(backend)
        if new != self.layout or self._gpu is not None:
            raise ValueError(f"cannot swap to a network of another layout ({new} vs {self.layout})")
        old, self.backend, self.generation = self.backend, backend, generation
        return old

    @property
    def lanes(self) -> int:
        """Frames worth handing to :meth:`push_many` together: one per backend lane (ONNX Runtime's
        one-thread sessions), at most a window; 1 for other backends."""
        return min(self.backend.capabilities.lanes, self.backend.frames)

    @property
    def latency_frames(self) -> int:
        """Frames of look-ahead the window adds."""
        return self.buffer.lookahead

    def push(self, frame: Frame) -> list[Frame]:
        """Add one frame; return the denoised frames that became ready (0, 1, or more after a reset)."""
        self._track(frame)
        return self._run(self.buffer.push(frame))

    def push_many(self, frames: Sequence[Frame]) -> list[Frame]:
        """Add several frames; the windows that become ready go to the backend as one batch (a
        backend with lanes denoises them at once). Same output as pushing them one by one."""
        for f in frames:
            self._track(f)
        return self._run([w for f in frames for w in self.buffer.push(f)])

    def _track(self, frame: Frame) -> None:
        """A noise-aware network's reading for this frame, taken as it arrives (so batching never
        changes which reading a frame gets); the last few frames' readings are kept."""
        if self.noise is None:
            return
        check_pixels(frame.pixels)
        self._readings[_key(frame)] = self.noise.update(frame.pixels)
        while len(self._readings) > self._slab.capacity + self.backend.frames:
            self._readings.popitem(last=False)

    def flush(self) -> list[Frame]:
        """At the end of a stream: denoise the frames still waiting for look-ahead."""
        out = self._run(self.buffer.flush())
        self._slab.clear()
        self._epoch = next(_EPOCHS)  # a later stream may reuse (source, segment, index): never its planes
        return out

    def denoise_window(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """K frames (H, W, 3) uint8 RGB, oldest -> newest -> the denoised target frame, same shape."""
        if len(frames) != self.backend.frames:
            raise ValueError(f"need {self.backend.frames} frames, got {len(frames)}")
        t0 = time.perf_counter()
        for f in frames:
            check_pixels(f)
        readings = [None if self.noise is None else self.noise.update(f) for f in frames]
        x = self._assemble([[frame_block(f, self.layout, r) for f, r in zip(frames, readings)]])
        self.assembled += 1
        return self._infer_post(x, frames[0].shape[:2], t0)[0]

    def _run(self, ready: list[tuple[Frame, list[Frame]]]) -> list[Frame]:
        """Denoise (target, window) pairs, one backend call per run of same-size windows."""
        done: list[Frame] = []
        limit = self.backend.capabilities.max_batch or len(ready)
        while ready:
            shape = ready[0][0].pixels.shape
            n = next((i for i, (o, _) in enumerate(ready) if o.pixels.shape != shape), len(ready))
            n = min(n, limit)
            group, ready = ready[:n], ready[n:]
            t0 = time.perf_counter()
            if self._gpu is not None:
                images = self._on_gpu([w for _, w in group], t0)
            else:
                x = self._window_input([w for _, w in group])
                images = self._infer_post(x, shape[:2], t0)
            done += [dataclasses.replace(o, pixels=img, generation=self.generation)
                     for (o, _), img in zip(group, images)]
        return done

    def _on_gpu(self, windows: list[list[Frame]], t0: float) -> list[np.ndarray]:
        """Windows through the GPU window runner: frames not yet on the GPU go up (once each), then
        one batched run returns the uint8 frames."""
        runner = self._gpu
        assert runner is not None
        keys = [[(self._epoch, *_key(f)) for f in w] for w in windows]
        runner.reserve(len({k for ks in keys for k in ks}))
        for w, ks in zip(windows, keys):
            for f, k in zip(w, ks):  # a frame already there is only touched (its noise reading was taken)
                runner.upload(k, f.pixels, self._readings.get(_key(f)))
        t1 = time.perf_counter()
        images = runner.denoise_many(keys)
        self.times.record(t1 - t0, time.perf_counter() - t1, 0.0, len(images))
        return images

    def _window_input(self, windows: list[list[Frame]]) -> np.ndarray:
        """The (N, K * block, Hp, Wp) input of these windows: a view of the slab when each window is K
        consecutive planes and each starts one plane after the previous (a stream in order), else
        a copy into the assembly buffer (stream edges reflect; several cameras interleave)."""
        frames = sorted({_key(f): f for w in windows for f in w}.values(), key=_key)  # stream order
        shape = (self.layout.block, *self.layout.padded(*windows[0][0].pixels.shape[:2]))
        self._slab.hold(frames, shape, lambda f, out: self._plane(f, out))
        starts = [self._slab.start([_key(f) for f in w]) for w in windows]
        first = starts[0]
        if first is not None and starts == list(range(first, first + len(windows))):
            return self._slab.windows(first, len(windows), self.backend.frames)
        self.assembled += len(windows)
        return self._assemble([[self._slab.plane(_key(f)) if _key(f) in self._slab else self._plane(f)
                                for f in w] for w in windows])

    def _plane(self, frame: Frame, out: np.ndarray | None = None) -> np.ndarray:
        """The frame's (block, Hp, Wp) float32 input block (into ``out``), with its reading's maps."""
        return frame_block(frame.pixels, self.layout, self._readings.get(_key(frame)), out)

    def _assemble(self, windows: list[list[np.ndarray]]) -> np.ndarray:
        """Windows of frame blocks -> a copy in the (N, K * block, Hp, Wp) assembly buffer (reused
        while the shape holds)."""
        b = self.layout.block
        shape = (len(windows), b * len(windows[0]), *windows[0][0].shape[1:])
        if self._input is None or self._input.shape != shape:
            self._input = np.empty(shape, np.float32)
        for n, blocks in enumerate(windows):
            for k, p in enumerate(blocks):
                self._input[n, b * k : b * k + b] = p
        return self._input

    def _infer_post(self, x: np.ndarray, hw: tuple[int, int], t0: float) -> list[np.ndarray]:
        t1 = time.perf_counter()
        y = self.backend.infer(x)
        t2 = time.perf_counter()
        h, w = hw
        out = []
        for row in y:
            img = row[:, :h, :w] if y.flags.writeable else row[:, :h, :w].copy()  # in place on the backend buffer
            out.append(to_uint8_rgb(img))
        self.times.record(t1 - t0, t2 - t1, time.perf_counter() - t2, len(out))
        return out


_EPOCHS = itertools.count()


def _key(f: Frame) -> tuple[str, int, int]:
    return f.source, f.segment, f.index


class PlaneSlab:
    """Frame blocks (C, Hp, Wp) of recent frames in arrival order in one float32 array of
    ``capacity`` slots: K blocks in consecutive slots are one contiguous (K*C, Hp, Wp) window, bound
    to the backend as it is, so a window costs no assembly copy (each frame is converted once,
    straight into its slot). When the slab is full the planes still needed move to the front: a
    few plane copies every ``capacity - K`` frames."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._slab: np.ndarray | None = None
        self._slot: dict[Hashable, int] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._slot

    def clear(self) -> None:
        self._slot.clear()

    def plane(self, key: Hashable) -> np.ndarray:
        assert self._slab is not None
        return self._slab[self._slot[key]]

    def hold(self, frames: Sequence[Frame], shape: tuple[int, int, int], fill: Callable[[Frame, np.ndarray], object]) -> None:
        """Make the slab hold the blocks (``shape``: C, Hp, Wp) of ``frames`` (distinct, oldest
        first), keeping the ones it has; the oldest blocks that are not among them go. If more
        frames are new than fit, the oldest new ones are left out (their windows are assembled)."""
        if self._slab is None or self._slab.shape[1:] != shape:
            self._slab = np.empty((self.capacity, *shape), np.float32)
            self._slot.clear()
        new = [f for f in frames if _key(f) not in self._slot][-self.capacity :]
        used = len(self._slot)
        if used + len(new) > self.capacity:
            wanted = [self._slot[_key(f)] for f in frames if _key(f) in self._slot]
            keep_from = max(min(wanted, default=used), used + len(new) - self.capacity)
            self._slab[: used - keep_from] = self._slab[keep_from:used]  # numpy copies overlaps safely
            self._slot = {k: i - keep_from for k, i in self._slot.items() if i >= keep_from}
            used -= keep_from
        for i, f in enumerate(new, used):
            fill(f, self._slab[i])
            self._slot[_key(f)] = i

    def start(self, keys: Sequence[Hashable]) -> int | None:
        """The first slot of these planes if they lie in consecutive slots, in order; else None."""
        slots = [self._slot.get(k) for k in keys]
        if slots[0] is None or slots != list(range(slots[0], slots[0] + len(slots))):
            return None
        return slots[0]

    def windows(self, start: int, n: int, k: int) -> np.ndarray:
        """(n, k*C, Hp, Wp) view: row i is slots start+i .. start+i+k-1 (each row contiguous)."""
        assert self._slab is not None and start + n - 1 + k <= self.capacity
        s = self._slab.strides
        return np.lib.stride_tricks.as_strided(self._slab[start:], (n, k * self._slab.shape[1], *self._slab.shape[2:]),
                                               (s[0], s[1], s[2], s[3]), writeable=False)
