"""The GPU runtime path shared by the ``cuda`` (PyTorch) and ``tensorrt`` backends.

* :class:`GpuExecutor` runs one network (a :class:`Runner`) on static device tensors: a dedicated
  CUDA stream, pinned host staging with ``non_blocking`` copies, and CUDA-graph replay of the network
  after one warm (eager) run. A new input shape re-allocates the static tensors and recaptures
  (addresses change only then). ``infer_host`` is the Backend protocol's host round trip.
* :class:`GpuWindowRunner` keeps the temporal window on the GPU: each frame is uploaded once as
  (H, W, 3) uint8, turned into its input block there (``planes.frame_block_torch``: float /255, its
  noise maps for a noise-aware network, reflect-padded to the stride) and kept in a small LRU of
  blocks; a window is one gather into the static input; the output is cropped, scaled and rounded
  to (H, W, 3) uint8 on the GPU and only that comes back.

Both also run with ``device="cpu"`` (no stream, no pinning, no graphs): the same code path, which is
how it is tested on machines without a GPU. Pre/post-processing match ``denoiser.Denoiser`` exactly
(same reflection, x/255 in float32 arithmetic, +0.5 then truncation).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..buffer import reflect_indices
from .. import noise_level
from ..errors import BackendUnavailable
from ..frame import check_pixels
from ..planes import Layout, frame_block_torch

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def require_cuda() -> Any:
    """The torch module, when PyTorch sees a CUDA GPU; else BackendUnavailable with one line."""
    try:
        import torch
    except ImportError:
        raise BackendUnavailable("GPU backends need PyTorch with CUDA: pip install 'stream_denoise[torch]' (CUDA build)") from None
    if not torch.cuda.is_available():
        cpu_build = torch.version.cuda is None
        raise BackendUnavailable("no CUDA GPU is visible to PyTorch" + (f" (PyTorch {torch.__version__} is a CPU build)" if cpu_build else ""))
    return torch


class Runner(Protocol):
    """The network part of a GPU backend."""

    dtype: torch.dtype  # of the input tensor (the output may differ)
    memory_format: torch.memory_format  # of the static input (TensorRT: contiguous NCHW)

    @property
    def in_channels(self) -> int | None:
        """The input's width when wider than 3K (zero-padded channels), else None."""

    @property
    def max_batch(self) -> int | None:
        """The most windows one run takes (a TensorRT profile's), else None."""

    def prepare(self, x: torch.Tensor) -> None:
        """``x`` is the new static input (new shape or address): bind it, allocate outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Enqueue the network on the current stream; return the output (N, 3, H, W) tensor."""

    def close(self) -> None:
        """Release what the runner holds (the executor has dropped its graphs and buffers)."""


_DEVICE_LOCK = threading.RLock()


def device_lock() -> threading.RLock:
    """One lock per process around every executor's GPU work (and a backend's device set-up).

    Measured on an H100: 16 pipelines in one process, each with its own executor, failed their
    CUDA-graph captures ("operation not permitted when stream is capturing") and then their frames,
    because other threads enqueued work while one captured (PyTorch hands out streams from a small
    pool, so executors can even share one). Under the lock no thread touches the GPU through an
    executor while another captures; one GPU runs their work one after another anyway."""
    return _DEVICE_LOCK


@dataclass
class _Shape:
    """The static tensors and captured graph of one input shape."""

    full: torch.Tensor  # what the runner reads (wider with in_channels)
    x: torch.Tensor  # what callers fill: (N, 3K, H, W), a view of full
    graph: Any = None
    out: torch.Tensor | None = None
    warm: bool = False


class GpuExecutor:
    """Static I/O, one stream, CUDA graphs around a :class:`Runner`. One caller at a time (and one
    executor at a time per process, see :func:`device_lock`).

    The static tensors and graph of the last ``max_shapes`` input shapes are kept (a batch of 4
    cameras, then of 8, then of 4 again replays the graphs it has), their graphs sharing one memory
    pool: they run one at a time on one stream, and their inputs stay allocated. A graph's output may
    lie in memory another graph uses for temporaries, so a run's output is valid until the next run
    of *any* shape: callers copy it out at once. A runner whose graphs depend on state bound at
    capture (TensorRT's execution context) is given ``max_shapes=1``: one shape, re-captured when
    the shape changes.
    """

    def __init__(self, runner: Runner, device: str | torch.device = "cuda", graphs: bool = True,
                 max_shapes: int = 6) -> None:
        import torch

        self.torch, self.runner = torch, runner
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        with self._locked():
            self.stream = torch.cuda.Stream(self.device) if self.cuda else None
            self._pool = torch.cuda.graph_pool_handle() if self.cuda and graphs else None
        self.graphs = graphs and self.cuda
        self.captures = 0  # how many CUDA graphs were captured (one per input shape kept)
        self.max_shapes = max_shapes
        self._shapes: OrderedDict[tuple[int, ...], _Shape] = OrderedDict()
        self._cur: _Shape | None = None
        self._staging: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _locked(self) -> contextlib.AbstractContextManager[Any]:
        return _DEVICE_LOCK if self.cuda else contextlib.nullcontext()

    @contextlib.contextmanager
    def on_stream(self) -> Iterator[None]:
        """No autograd, and (on a GPU) the device lock and this executor's stream as the current stream."""
        with self._locked(), self.torch.no_grad(), (self.torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext()):
            yield

    @property
    def graph_active(self) -> bool:
        return self._cur is not None and self._cur.graph is not None

    @property
    def _full(self) -> torch.Tensor | None:
        return self._cur.full if self._cur is not None else None

    def input(self, shape: Sequence[int]) -> torch.Tensor:
        """The static input tensor for ``shape`` (N, 3K, H, W), in the runner's dtype. A shape seen
        recently gets its tensors (and graph) back; a new one is allocated and bound to the runner,
        and the least recently used beyond ``max_shapes`` is dropped. A runner with a wider
        ``in_channels`` (channels padded for tensor cores) gets the whole tensor, its extra channels
        zero; callers write the first 3K through the returned view."""
        shape = tuple(int(s) for s in shape)
        if self._cur is not None and tuple(self._cur.x.shape) == shape:
            return self._cur.x
        with self.on_stream():
            st = self._shapes.get(shape)
            if st is not None:
                self._shapes.move_to_end(shape)
                if st.graph is None:  # re-bind (TensorRT: shape and addresses), run eagerly once more, then capture
                    self.runner.prepare(st.full)
                    st.warm = False
            else:
                self._cur = None
                wide = (shape[0], max(shape[1], self.runner.in_channels or 0), *shape[2:])
                full = self.torch.zeros(wide, dtype=self.runner.dtype, device=self.device)
                full = full.contiguous(memory_format=self.runner.memory_format)
                self.runner.prepare(full)  # may refuse the shape: then nothing new stays bound
                st = self._shapes[shape] = _Shape(full, full[:, : shape[1]])
                while len(self._shapes) > self.max_shapes:
                    self._shapes.popitem(last=False)
            self._cur = st
        return st.x

    def run(self) -> torch.Tensor:
        """The network on the current static input: eager the first time for a shape, then a
        captured CUDA graph replayed. The output is valid until the next run (of any shape)."""
        st = self._cur
        assert st is not None, "input() first"
        with self.on_stream():
            if st.graph is not None:
                st.graph.replay()
                return st.out  # type: ignore[return-value]
            if self.graphs and st.warm:
                try:
                    return self._capture(st)
                except Exception as exc:  # some runners cannot be captured: keep going eagerly
                    log.warning("CUDA graph capture failed (%s); running without CUDA graphs", str(exc).splitlines()[0][:200])
                    self.graphs = False
                    for other in self._shapes.values():
                        other.graph = other.out = None
            out = self.runner.forward(st.full)
            st.warm = True
            return out

    def _capture(self, st: _Shape) -> torch.Tensor:
        torch = self.torch
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=self.stream, capture_error_mode="thread_local"):
            out = self.runner.forward(st.full)
        st.graph, st.out = graph, out
        self.captures += 1
        log.debug("CUDA graph captured for input %s", tuple(st.full.shape))
        graph.replay()  # capturing does not execute
        return out

    def staging(self, name: str, shape: Sequence[int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """A (pinned host, device) tensor pair reused while the shape and dtype stay (one tensor on CPU)."""
        shape = tuple(int(s) for s in shape)
        pair = self._staging.get(name)
        if pair is None or tuple(pair[0].shape) != shape or pair[0].dtype != dtype:
            host = self.torch.empty(shape, dtype=dtype, pin_memory=self.cuda)
            dev = self.torch.empty(shape, dtype=dtype, device=self.device) if self.cuda else host
            pair = self._staging[name] = (host, dev)
        return pair

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def infer_host(self, x: np.ndarray) -> np.ndarray:
        """Backend.infer: x (N, 3K, H, W) float32 in [0, 1] -> (N, 3, H, W) float32. The result is a
        reused (pinned) buffer, valid until the next call."""
        with self.on_stream():
            host_in, dev_in = self.staging("in", x.shape, self.torch.float32)
            np.copyto(host_in.numpy(), x, casting="same_kind")  # one copy, from a strided view too
            if dev_in is not host_in:
                dev_in.copy_(host_in, non_blocking=True)
            self.input(x.shape).copy_(dev_in)  # cast to the runner's dtype/layout on the device
            out = self.run()
            host_out, dev_out = self.staging("out", out.shape, self.torch.float32)
            dev_out.copy_(out)
            if dev_out is not host_out:
                host_out.copy_(dev_out, non_blocking=True)
            self.synchronize()
        return host_out.numpy()

    def close(self) -> None:
        """Wait for queued work, drop the graphs and buffers, then the runner's own resources."""
        with self._locked():
            self.synchronize()
            self._shapes.clear()
            self._cur = None
            self._staging.clear()
            self.runner.close()


class GpuWindowRunner:
    """The temporal window on the GPU.

    Two ways in: ``upload(key, pixels)`` + ``denoise(keys)`` for a caller that assembles windows
    itself (Denoiser with its TemporalBuffer: key = (source, segment, index)), or ``push(pixels)`` /
    ``flush()``, which follow TemporalBuffer's windows (reflection at the start and at flush) for one
    stream. Frames are (H, W, 3) uint8 RGB; outputs are new (H, W, 3) uint8 RGB arrays.
    """

    def __init__(self, executor: GpuExecutor, layout: Layout, cache_size: int | None = None) -> None:
        self.ex, self.torch = executor, executor.torch
        self.layout = layout
        self.frames, self.target, self.stride = layout.frames, layout.target, layout.stride
        self.lookahead = self.frames - 1 - self.target
        self.noise = noise_level.NoiseTracker()  # the stream's reading when a caller gives none
        self.capacity = max(cache_size or 2 * self.frames + 2, self.frames)
        self._slots: OrderedDict[Hashable, int] = OrderedDict()
        self._hw: tuple[int, int] | None = None
        self._t: dict[str, Any] = {}
        self._count = self._next = self._segment = 0

    # -- frames onto the GPU ----------------------------------------------------------------------

    def _ensure_size(self, h: int, w: int) -> None:
        if self._hw == (h, w):
            return
        torch, ex = self.torch, self.ex
        hp, wp = self.layout.padded(h, w)
        with ex.on_stream():
            ex.synchronize()
            t = {"pool": torch.zeros((self.capacity, self.layout.block, hp, wp), dtype=ex.runner.dtype, device=ex.device),
                 "u8_host": torch.empty((h, w, 3), dtype=torch.uint8, pin_memory=ex.cuda)}
            t["u8_dev"] = torch.empty((h, w, 3), dtype=torch.uint8, device=ex.device) if ex.cuda else t["u8_host"]
            t["uploaded"] = torch.cuda.Event() if ex.cuda else None
        self._t, self._hw = t, (h, w)
        self._slots.clear()

    def _out_buffers(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(post float32 (N, 3, H, W), device uint8 (N, H, W, 3), pinned host uint8) for batches of n,
        kept per n (n is one of a few batch buckets)."""
        t, ex, torch = self._t, self.ex, self.torch
        assert self._hw is not None
        bufs = t.setdefault("out", {})
        if n not in bufs:
            h, w = self._hw
            post = torch.empty((n, 3, h, w), dtype=torch.float32, device=ex.device)
            host = torch.empty((n, h, w, 3), dtype=torch.uint8, pin_memory=ex.cuda)
            dev = torch.empty((n, h, w, 3), dtype=torch.uint8, device=ex.device) if ex.cuda else host
            bufs[n] = (post, dev, host)
        return bufs[n]

    def bucket(self, n: int) -> int:
        """The batch size a batch of n windows runs at: the next power of two, within the runner's
        ``max_batch`` (a TensorRT profile's). Varying numbers of cameras then reuse a few captured
        graphs instead of capturing one per size (measured on an H100 before this: 16 cameras
        batched ran at 56 fps in all against 133 unbatched, recapturing as the batch size moved)."""
        b = 1 << max(n - 1, 0).bit_length()
        cap = self.ex.runner.max_batch
        return max(n, min(b, cap)) if cap else b

    def reserve(self, planes: int) -> None:
        """Make room for at least ``planes`` frames at once (a batch of windows of several cameras
        needs all its frames on the GPU together). The pool only grows to what a batch needs, so it
        is bounded by the largest batch (cameras x window); planes already there are kept."""
        if planes <= self.capacity:
            return
        new = planes + self.frames + 1  # the next frame of each stream fits before an eviction
        if self._hw is not None:
            old = self._t["pool"]
            with self.ex.on_stream():
                pool = self.torch.zeros((new, *old.shape[1:]), dtype=old.dtype, device=old.device)
                pool[: len(old)].copy_(old)
            self._t["pool"] = pool
        self.capacity = new

    def __contains__(self, key: Hashable) -> bool:
        return key in self._slots

    def upload(self, key: Hashable, pixels: np.ndarray, sigmas: np.ndarray | None = None) -> None:
        """Put one frame on the GPU as its input block (once per key; LRU of ``capacity``);
        ``sigmas``: the stream's noise reading for its maps (``noise_level.estimate``; by default
        the runner's own tracker reads the frames it is given, as the Denoiser's does)."""
        check_pixels(pixels)
        self._ensure_size(pixels.shape[0], pixels.shape[1])
        if key in self._slots:
            self._slots.move_to_end(key)
            return
        if sigmas is None and self.layout.noise_planes:
            sigmas = self.noise.update(pixels)
        slot = self._slots.popitem(last=False)[1] if len(self._slots) >= self.capacity else len(self._slots)
        t, ex = self._t, self.ex
        with ex.on_stream():
            if t["uploaded"] is not None:
                t["uploaded"].synchronize()  # the previous upload has left the pinned buffer
            np.copyto(t["u8_host"].numpy(), pixels)
            if t["u8_dev"] is not t["u8_host"]:
                t["u8_dev"].copy_(t["u8_host"], non_blocking=True)
                t["uploaded"].record(ex.stream)
            self._preprocess(t["u8_dev"], t["pool"][slot], self._lut(sigmas))
        self._slots[key] = slot

    @staticmethod
    def _preprocess(u8: torch.Tensor, block: torch.Tensor, lut: torch.Tensor | None) -> None:
        """(H, W, 3) uint8 on the device -> its input block (``planes.frame_block_torch``)."""
        frame_block_torch(u8, block, lut)

    def _lut(self, sigmas: np.ndarray | None) -> torch.Tensor | None:
        """The noise maps' lookup table on the device (re-sent only when the reading changes)."""
        if not self.layout.noise_planes or sigmas is None:
            return None
        if self._t.get("sigmas") is None or not np.array_equal(self._t["sigmas"], sigmas):
            lut = noise_level.lut(sigmas, self.layout.curve)[: self.layout.noise_planes]
            self._t["lut"] = self.torch.from_numpy(lut).to(self.ex.device)
            self._t["sigmas"] = np.array(sigmas)
        return self._t["lut"]

    # -- windows ----------------------------------------------------------------------------------

    def denoise(self, keys: Sequence[Hashable]) -> np.ndarray:
        """The denoised target frame of the window ``keys`` (K uploaded frames, oldest -> newest)."""
        return self.denoise_many([keys])[0]

    def denoise_many(self, windows: Sequence[Sequence[Hashable]]) -> list[np.ndarray]:
        """The denoised target frames of N windows (each K uploaded keys, oldest -> newest; e.g. one
        per camera of this size) in one network run: one gather of the N*K planes into the static
        input, the network (a CUDA graph per batch bucket, see :meth:`bucket`), post-processing of the batch on the GPU
        and one copy of N uint8 frames back."""
        if not windows:
            return []
        if any(len(keys) != self.frames for keys in windows):
            raise ValueError(f"need {self.frames} frames per window, got {sorted({len(k) for k in windows})}")
        missing = [k for keys in windows for k in keys if k not in self._slots]
        if missing:
            raise KeyError(f"frames not uploaded (or evicted): {missing[:4]}")
        assert self._hw is not None
        torch, ex, pool = self.torch, self.ex, self._t["pool"]
        n, (h, w) = len(windows), self._hw
        nb = self.bucket(n)
        slots = [self._slots[key] for keys in windows for key in keys]
        slots += slots[: self.frames] * (nb - n)  # rows past n repeat the first window; their output is dropped
        for keys in windows:
            for key in keys:
                self._slots.move_to_end(key)
        with ex.on_stream():
            x = ex.input((nb, self.layout.channels, pool.shape[2], pool.shape[3]))
            post, out_dev, out_host = self._out_buffers(nb)
            index = torch.as_tensor(slots, dtype=torch.long).to(ex.device, non_blocking=True)
            x.copy_(pool.index_select(0, index).view(x.shape))  # (N*K, block, Hp, Wp) is (N, K*block, Hp, Wp)
            y = ex.run()
            post[:n].copy_(y[:n, :, :h, :w])
            post[:n].mul_(255.0).add_(0.5).clamp_(0.0, 255.0)
            out_dev[:n].copy_(post[:n].permute(0, 2, 3, 1))  # float -> uint8 truncates: x + 0.5 rounds
            if out_dev is not out_host:
                out_host[:n].copy_(out_dev[:n], non_blocking=True)
            ex.synchronize()
            host = out_host.numpy()
            return [host[i].copy() for i in range(n)]

    def push(self, pixels: np.ndarray, sigmas: np.ndarray | None = None) -> np.ndarray | None:
        """Add the next frame of the stream (with the stream's noise reading, for a noise-aware
        network); return the frame that became ready (``lookahead`` frames behind), or None while
        the window fills. A size change needs ``flush()`` first."""
        if self._count and self._hw != pixels.shape[:2]:
            raise ValueError(f"frame size changed from {self._hw} to {pixels.shape[:2]}: call flush() first")
        self.upload(("push", self._segment, self._count), pixels, sigmas)
        self._count += 1
        if self._next + self.lookahead < self._count:
            self._next += 1
            return self._emit(self._next - 1)
        return None

    def flush(self) -> list[np.ndarray]:
        """At the end of a stream: the frames still waiting for look-ahead; then start a new stream."""
        out = [self._emit(t) for t in range(self._next, self._count)]
        self.reset()
        return out

    def reset(self) -> None:
        """Forget the stream position (planes already uploaded age out of the LRU)."""
        self._segment += 1
        self._count = self._next = 0

    def _emit(self, t: int) -> np.ndarray:
        idx = reflect_indices(t, self.frames, self.target, self._count)
        return self.denoise([("push", self._segment, i) for i in idx])

    def close(self) -> None:
        with self.ex.on_stream():
            self.ex.synchronize()
            self._t.clear()
            self._slots.clear()
            self._hw = None
