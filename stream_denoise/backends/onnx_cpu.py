"""ONNX Runtime on the CPU: the default backend where there is no GPU.

Tuned for a small machine: all graph optimisations (on x86 these include the NCHWc layout for fp32
convolutions and the NHWC integer kernels for INT8 Q/DQ models: measured fastest of the levels),
intra-op threads = cores (settable), one inter-op thread, I/O binding to pre-allocated output
buffers (no per-frame output allocation; a contiguous float32 input is bound without a copy).

``spinning`` (default off): ONNX Runtime's intra-op workers busy-wait between operators by default,
taking CPU the pipeline's decode and publish threads and other processes need. Measured on the
2-core box (lite, 640x360, 2 threads, one process per setting, other jobs running): inference alone
median 18-22 ms without spinning vs 27-28 ms with it (720p: 82-91 vs 114-116 ms; the INT8 model
14-16 vs 23 ms); beside a decode thread, inference 17-22 vs 17-19 ms while the decoder ran 25-35 %
faster without spinning. The saving of spinning (thread wake-ups, tens of microseconds per operator)
is small next to that. ``spinning=True`` restores ONNX Runtime's default.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from ..errors import ModelError
from ..model_files import onnx_file
from ..onnx_session import open_session
from ..planes import Layout
from ..strict import Strict
from . import Capabilities

if TYPE_CHECKING:
    from ..config import ModelConfig

log = logging.getLogger(__name__)


class OnnxRuntimeOptions(Strict):
    """``[model.onnxruntime]``: the ``onnxruntime`` backend's own options."""

    lanes: int | None = Field(
        None, ge=1, le=256,
        description="Frames of a batch denoised at once, each on its own one-thread session (consecutive frames "
                    "of a file, or several cameras); None = one per thread, 1 = off.")


TILE_PIXELS = 1280 * 720  # a lone frame at least this large is split into bands across the lanes


def band_margin(stride: int) -> int:
    """Rows of context per band side: more than the receptive field radius, on the stride grid.
    The radius grows with the depth, which the stride (2 ** levels) tells: lite (stride 4) ~16
    rows, base (stride 8, three levels) ~60 (measured by the tests)."""
    return 10 * stride


class _Session:
    """One ONNX Runtime session with its I/O binding (bound to caller-owned buffers, no copies)."""

    def __init__(self, path: Path, threads: int, spinning: bool) -> None:
        self.session = open_session(path, threads, spinning)
        inp = self.session.get_inputs()[0]
        self.in_name, self.out_name = inp.name, self.session.get_outputs()[0].name
        self.in_type = np.float16 if "float16" in inp.type else np.float32
        self.binding = self.session.io_binding()

    def run(self, x: np.ndarray, out: np.ndarray) -> None:
        """x (n, 3K, H, W) -> out (n, 3, H, W); both C-contiguous arrays (or row slices of one)."""
        b = self.binding
        b.bind_input(self.in_name, "cpu", 0, self.in_type, x.shape, x.ctypes.data)
        b.bind_output(self.out_name, "cpu", 0, self.in_type, out.shape, out.ctypes.data)
        self.session.run_with_iobinding(b)  # releases the GIL: lanes run in parallel

    def run_rows(self, x: np.ndarray, out: np.ndarray) -> None:
        """One window at a time: on one core a batch is slower than its windows one by one (the
        activations of a single window stay in cache)."""
        for i in range(x.shape[0]):
            self.run(x[i : i + 1], out[i : i + 1])

    def close(self) -> None:
        self.binding.clear_binding_inputs()
        self.binding.clear_binding_outputs()


class OnnxRuntimeBackend:
    """``infer(x)`` on the CPU. One frame (N = 1) runs on a session using every thread (lowest
    latency); a batch (N >= 2: consecutive frames of a file, or several cameras) is split across
    ``lanes`` one-thread sessions that run at once. On the 2-core box (lite, inference alone) two
    one-thread lanes give 1.4x the frames per second of one two-thread session at 640x360 and 1.8x
    at 320x180: intra-op parallelism synchronises the threads after every operator, data
    parallelism never does (``python -m benchmarks.lanes``)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, spinning: bool = False,
                 lanes: int | None = None, tile_pixels: int = TILE_PIXELS) -> None:
        self.path = Path(path)
        self.threads = threads or os.cpu_count() or 1
        self.lanes = self.threads if lanes is None else lanes
        self.tile_pixels = tile_pixels
        self._wide = _Session(self.path, self.threads, spinning)
        meta = self._wide.session.get_modelmeta().custom_metadata_map
        try:
            layout = Layout.from_meta(meta)
        except (KeyError, ValueError):
            raise ModelError(f"{path} is an ONNX model but not a stream_denoise one (no window metadata)") from None
        self.frames, self.target, self.stride, self.noise_planes = (layout.frames, layout.target, layout.stride,
                                                                    layout.noise_planes)
        self.map_curve = layout.curve
        self.meta = dict(meta)
        self._in_type = self._wide.in_type
        self._lanes: list[_Session] = []
        self._pool: ThreadPoolExecutor | None = None
        if self.lanes > 1:
            self._lanes = [_Session(self.path, 1, spinning) for _ in range(self.lanes)]
            self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="ort-lane")
        self._out: np.ndarray | None = None
        self.capabilities = Capabilities(lanes=max(self.lanes, 1))
        log.info("onnxruntime: %s (%d threads for one frame, %d one-thread lanes for batches, window %d/%d)",
                 self.path.name, self.threads, len(self._lanes), self.target, self.frames)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> OnnxRuntimeBackend:
        return cls(onnx_file(cfg.model, cfg.precision), cfg.threads, lanes=cfg.onnxruntime.lanes)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """x: (N, K * block, H, W) float32 (``planes.Layout``) -> (N, 3, H, W) float32. The result is a reused buffer, valid
        until the next call. Each row of x must be contiguous, the batch need not be (the
        Denoiser's windows are overlapping views of its plane slab): lanes bind row by row."""
        if x.dtype != self._in_type or not x[:1].flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=self._in_type)  # rows of a view are bound as they are
        n = x.shape[0]
        shape = (n, 3, x.shape[2], x.shape[3])
        if self._out is None or self._out.shape != shape:
            self._out = np.empty(shape, self._in_type)
        out = self._out
        if n == 1 and self._pool is not None and x.shape[2] * x.shape[3] >= self.tile_pixels:
            self._tiled(x, out)
        elif n == 1 or self._pool is None:
            self._wide.run(np.ascontiguousarray(x), out)
        else:
            bounds = np.linspace(0, n, min(n, len(self._lanes)) + 1).astype(int)
            _finish([self._pool.submit(lane.run_rows, x[a:b], out[a:b])
                     for lane, a, b in zip(self._lanes, bounds[:-1], bounds[1:])])
        return out if self._in_type == np.float32 else out.astype(np.float32)

    def _tiled(self, x: np.ndarray, out: np.ndarray) -> None:
        """One large frame as horizontal bands, one per lane, each with ``band_margin`` rows of
        context above and below (more than the network's receptive field, on its stride grid), so
        each band's own rows equal the whole frame's output: no seams (tested)."""
        assert self._pool is not None
        h, s = x.shape[2], self.stride
        m = band_margin(s)
        cuts = [min(h, -(-h * i // len(self._lanes)) // s * s) for i in range(len(self._lanes) + 1)]
        cuts[-1] = h

        def band(lane: _Session, a: int, b: int) -> None:
            r0, r1 = max(0, a - m), min(h, b + m)
            xin = np.ascontiguousarray(x[:, :, r0:r1])
            y = np.empty((1, 3, r1 - r0, x.shape[3]), self._in_type)
            lane.run(xin, y)
            out[:, :, a:b] = y[:, :, a - r0 : b - r0]

        _finish([self._pool.submit(band, lane, a, b) for lane, a, b in zip(self._lanes, cuts[:-1], cuts[1:]) if b > a])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for s in (self._wide, *self._lanes):
            s.close()


def _finish(jobs: list[Future]) -> None:
    """Wait for every lane (none may still write into the output or use its session), then raise
    the first failure."""
    wait(jobs)
    for job in jobs:
        job.result()
