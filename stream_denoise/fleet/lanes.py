"""The inference side of the multi-process runtime: lanes that take the newest frames of every camera
from their shared-memory rings, denoise them and publish them.

A lane is a thread with its own backend (on a CPU: a one-thread ONNX Runtime session; sessions
release the interpreter lock while they run, so the lanes use every core). Each turn a lane claims
the next camera, round-robin, that has a frame waiting (a camera is served by one lane at a time),
takes its newest frame (a live camera: the older waiting ones are counted as dropped, newest
wins; a file: the next one) and runs the one camera step (``camera_loop.denoise_frames``) through
that camera's :class:`~stream_denoise.denoiser.Denoiser` (its own temporal window). Over capacity
every camera keeps its turn: drops fall on each camera in proportion, never starving one.

On a GPU backend (``device_windows``) the cameras share a :class:`~stream_denoise.multicam.BatchingBackend`
as in the one-process runtime; the lanes are then many (one per camera, at most 64) and each
marks its camera busy while it works, so a batch gathers the windows of every camera with a
frame waiting (CUDA graphs per bucket size, frames uploaded once, windows kept on the GPU).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from ..backends import Backend, Capabilities
from ..camera_loop import denoise_frames, finish_stream
from ..config import CameraConfig
from ..denoiser import Denoiser
from ..errors import StreamDenoiseError
from ..frame import Frame
from ..metrics import Metrics
from .ring import FrameRing

log = logging.getLogger(__name__)

IDLE_S = 0.0005  # a lane that found no frame waiting looks again after this long


class LaneRouted:
    """A camera's backend in the lanes: each ``infer`` runs on the calling lane's own backend."""

    def __init__(self, first: Backend) -> None:
        self.name, self.frames, self.target, self.stride = first.name, first.frames, first.target, first.stride
        self.noise_planes, self.map_curve = first.noise_planes, first.map_curve
        self.capabilities = Capabilities(max_batch=first.capabilities.max_batch)  # one window per call
        self._local = threading.local()

    def bind(self, backend: Backend) -> None:
        """(In a lane's thread.) Run this thread's calls on ``backend``."""
        self._local.backend = backend

    def infer(self, x: np.ndarray) -> np.ndarray:
        backend: Backend = self._local.backend
        return backend.infer(x)

    def close(self) -> None:
        """The lanes' backends are closed by their owner."""


class RingCamera:
    """One camera of the multi-process runtime, as the inference process sees it."""

    def __init__(self, cfg: CameraConfig, ring: FrameRing, denoiser: Denoiser, live: bool,
                 busy: Callable[[], AbstractContextManager[Any]] = nullcontext) -> None:
        self.cfg, self.name, self.topic = cfg, cfg.name, cfg.effective_topic
        self.ring, self.denoiser, self.live, self.busy = ring, denoiser, live, busy
        self.metrics = Metrics()
        self.published = self.publish_dropped = 0
        self.rtsp_out: Any = None
        self.done = False  # every frame out (its writer ended and the window was flushed)
        self.claimed = False  # a lane is working on it (the scheduler's lock)
        self.lag_s = 0.0  # how old the newest frame taken was when taken (decode -> inference)
        self._keep = denoiser.backend.frames + 1  # a window reads at most its last K frames taken (buffer.py)
        self._failure: str | None = None

    # -- the lane's step ---------------------------------------------------------------------------
    def step(self, output: Callable[[Frame], None]) -> None:
        frame = self.ring.take(newest=self.live)
        if frame is None:
            if self.ring.ended:
                finish_stream(self.denoiser, self.metrics, output, busy=self.busy)
                self.ring.release_all()
                self.done = True
            return
        self.metrics.frames_in += 1
        self.lag_s = time.time() - frame.captured_at
        denoise_frames([frame], self.denoiser, self.metrics, output, busy=self.busy)
        self.ring.release(self._keep)

    def fail(self, why: str) -> None:
        """A lane could not denoise this camera (a bad frame, a backend error): it stops, the others go on."""
        self._failure = why
        self.done = True
        self.ring.release_all()

    # -- what users see --------------------------------------------------------------------------------
    @property
    def error(self) -> StreamDenoiseError | None:
        why = self._failure or (self.ring.error if self.state == "failed" else None)
        if why is None:
            return None
        from ..errors import SourceError

        kind, _, text = why.partition(": ")
        return SourceError(text or why) if kind in ("SourceError", "SourceTimeout") else StreamDenoiseError(why)

    @property
    def state(self) -> str:
        if self._failure is not None:
            return "failed"
        s = self.ring.source_view().state
        return "running" if s == "ended" and not self.done else s

    @property
    def connected(self) -> bool:
        return self.ring.source_view().connected

    @property
    def fps(self) -> float | None:
        """The source's nominal frame rate, as its worker read it."""
        return self.ring.source_view().fps

    @property
    def dropped(self) -> int:
        """Frames decoded and never denoised: the source's own drops, the waiting frames a newer one
        replaced (newest wins), frames that found the ring full or were too large for it."""
        return self.ring.source_view().frames_dropped + self.ring.skipped + self.ring.ring_full + self.ring.too_large

    def status_line(self) -> str:
        v = self.ring.source_view()
        line = f"{self.name} [{self.state}] " + self.metrics.status(self.dropped, v.reconnects, self.publish_dropped)
        line += f" | lag {1000 * self.lag_s:.0f} ms"
        return f"{line} | {self.rtsp_out.status()}" if self.rtsp_out is not None else line

    def snapshot(self) -> dict[str, Any]:
        v = self.ring.source_view()
        snap = self.metrics.snapshot()
        snap.update(up=int(v.connected), failed=int(self.state == "failed"), published=self.published,
                    publish_dropped=self.publish_dropped, source_frames_decoded=v.frames_decoded,
                    source_frames_dropped=self.dropped, source_reconnects=v.reconnects,
                    source_decode_errors=v.decode_errors, ring_skipped=self.ring.skipped,
                    ring_full=self.ring.ring_full, lag_seconds=self.lag_s)
        if self.rtsp_out is not None:
            snap.update(self.rtsp_out.snapshot())
        return snap

    def close(self) -> None:
        """The ring is closed by its owner (the decode workers)."""


class Lanes:
    """``lanes`` threads serving ``cameras``; ``routes``: for each CPU model, its router and one
    backend per lane (bound in that lane's thread)."""

    def __init__(self, cameras: list[RingCamera], lanes: int,
                 routes: list[tuple[LaneRouted, list[Backend]]]) -> None:
        self.cameras, self.lanes, self.routes = cameras, lanes, routes
        self._lock = threading.Lock()
        self._cursor = 0
        self.turns = [0] * lanes  # steps each lane ran
        self.idle_s = [0.0] * lanes

    def run(self, stop: threading.Event, output: Callable[[RingCamera, Frame], None]) -> None:
        """Until every camera is done or ``stop`` is set."""
        threads = [threading.Thread(target=self._lane, args=(i, stop, output), name=f"lane:{i}", daemon=True)
                   for i in range(self.lanes)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)

    def _lane(self, i: int, stop: threading.Event, output: Callable[[RingCamera, Frame], None]) -> None:
        for router, backends in self.routes:
            router.bind(backends[i])
        while not stop.is_set():
            cam = self._claim()
            if cam is None:
                if all(c.done for c in self.cameras):
                    return
                t0 = time.perf_counter()
                time.sleep(IDLE_S)
                self.idle_s[i] += time.perf_counter() - t0
                continue
            try:
                cam.step(lambda f, cam=cam: output(cam, f))  # type: ignore[misc]
                self.turns[i] += 1
            except StreamDenoiseError as exc:
                log.error("%s: camera stopped: %s", cam.name, exc)
                cam.fail(str(exc))
            except Exception as exc:  # a bug in one camera must not take the others down
                log.exception("%s: denoising failed", cam.name)
                cam.fail(f"{cam.name}: {exc}")
            finally:
                with self._lock:
                    cam.claimed = False

    def _claim(self) -> RingCamera | None:
        """The next camera after the previous claim with a frame waiting (or an end to flush)."""
        with self._lock:
            n = len(self.cameras)
            for k in range(n):
                j = (self._cursor + k) % n
                cam = self.cameras[j]
                if cam.claimed or cam.done:
                    continue
                if cam.ring.pending() > 0 or cam.ring.writer_done:
                    cam.claimed = True
                    self._cursor = j + 1
                    return cam
        return None
