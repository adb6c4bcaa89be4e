"""Many cameras in one process: one source and worker per camera, one batched backend per model,
one publishing socket.

::

    camera i: source (reader thread) -> worker i: Denoiser (own TemporalBuffer, pre/post)
                                                    |  infer(1, 3K, H, W)
                                                    v
              BatchingBackend (one thread per model): same-size windows of several cameras -> one
              backend.infer(N, 3K, H, W) call -> rows back to their workers
                                                    |
    worker i: Publisher.send(frame, topic i)  (one PUB socket shared under a lock; it never blocks)

Each camera keeps its own temporal buffer, topic and metrics; only inference is shared. A camera's
worker is *busy* from the moment it has a new frame until its windows are denoised. The batcher
runs a batch as soon as every busy camera has submitted its window, or ``batch.max_wait_ms`` after
the first one arrived, whichever comes first; cameras of another frame size go in another batch. On
a GPU backend the workers hand over uint8 frames and window keys instead, and the batcher runs the
batch through the backend's window runner (frames uploaded once, windows kept on the GPU). A
stalled, reconnecting or dead camera is not busy, so nothing ever waits for it; its worker sits in
``source.read`` with a short timeout and the others go on.

Live cameras (RTSP, USB) are opened in their worker, retried with capped backoff while unreachable
(``source.reconnect``), so one camera that is down at start does not stop the deployment; files are
opened at construction and a bad path raises there. ``run`` raises only when *every* camera failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .backends import Backend, Capabilities, DeviceBackend
from .config import CameraConfig, DeploymentConfig, ModelConfig
from .denoiser import Denoiser
from .errors import BackendUnavailable, StreamDenoiseError
from .frame import Frame, check_pixels
from .metrics import Metrics
from .camera_loop import denoise_stream, source_counters
from .resources import Closing
from .sources import Source, is_live

if TYPE_CHECKING:
    from .fleet import DecodeWorkers, Lanes, RingCamera

log = logging.getLogger(__name__)

READ_POLL_S = 0.2  # a worker re-checks the stop flag at least this often
_WAIT_POLL_S = 0.5  # a worker waiting for its batch re-checks that the batcher is alive this often


# ---------------------------------------------------------------------------------------------------
# Batching: several cameras, one backend call
# ---------------------------------------------------------------------------------------------------

@dataclass(eq=False)  # identity: requests are removed from the pending list by identity
class _Request:
    key: tuple[object, ...]  # windows with equal keys can share a batch
    rows: int  # windows in this request: one, or a few from one camera (its flush)
    x: np.ndarray | None = None  # host path: (rows, 3K, H, W) float32
    windows: list[list[Hashable]] | None = None  # device-window path: frame keys of each window...
    pixels: dict[Hashable, tuple[np.ndarray, np.ndarray | None]] | None = None  # ...those frames, (H, W, 3) uint8, and noise readings
    at: float = field(default_factory=time.monotonic)  # when it was submitted
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | list[np.ndarray] | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    batches: int = 0
    windows: int = 0
    largest: int = 0
    infer_s: float = 0.0  # seconds spent in backend.infer

    @property
    def mean_size(self) -> float:
        return self.windows / self.batches if self.batches else 0.0


class BatchingBackend:
    """Shares one :class:`Backend` among cameras: concurrent ``infer`` calls whose inputs have the
    same shape run as one ``(N, 3K, H, W)`` call (N <= ``max_size``).

    Each camera gets its own :meth:`client` (a Backend for its :class:`Denoiser`) and marks itself
    :meth:`BatchClient.busy` while it works on a frame; a batch waits only for busy cameras, and at
    most ``max_wait_s`` after its first window.

    On a GPU backend (``device_windows``) the cameras' Denoisers hand over uint8 frames and the keys
    of their windows instead of float32 windows; the batching thread owns the backend's window
    runner (frames uploaded once, windows gathered on the GPU, one ``denoise_many`` per batch).
    """

    def __init__(self, backend: Backend, max_size: int = 8, max_wait_s: float = 0.004) -> None:
        self.backend = backend
        self.max_size, self.max_wait_s = max_size, max_wait_s
        self.stats = BatchStats()
        self._pending: list[_Request] = []
        self._runners: dict[tuple[int, ...], Any] = {}  # the backend's window runners by frame size (batching thread)
        self._clients = 0
        self._busy = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"batch:{backend.name}", daemon=True)
        self._thread.start()

    def client(self) -> BatchClient:
        self._clients += 1
        return BatchClient(self)

    # -- called by clients -------------------------------------------------------------------------
    def _submit(self, x: np.ndarray) -> np.ndarray:
        return self._wait(_Request((x.shape[1:], x.dtype), x.shape[0], x=x))  # type: ignore[return-value]

    def _submit_windows(self, windows: list[list[Hashable]],
                        pixels: dict[Hashable, tuple[np.ndarray, np.ndarray | None]]) -> list[np.ndarray]:
        hw = next(iter(pixels.values()))[0].shape[:2]
        return self._wait(_Request(("windows", hw), len(windows), windows=windows, pixels=pixels))  # type: ignore[return-value]

    def _wait(self, req: _Request) -> np.ndarray | list[np.ndarray]:
        with self._cond:
            if self._closed:
                raise BackendUnavailable(f"{self.backend.name}: the shared backend is closed")
            self._pending.append(req)
            self._cond.notify_all()
        while not req.done.wait(_WAIT_POLL_S):
            if not self._thread.is_alive():
                raise BackendUnavailable(f"{self.backend.name}: the batching thread stopped")
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _set_busy(self, delta: int) -> None:
        with self._cond:
            self._busy += delta
            self._cond.notify_all()

    # -- the batching thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    for r in self._pending:
                        r.error = BackendUnavailable(f"{self.backend.name}: the shared backend was closed")
                        r.done.set()
                    self._pending.clear()
                    return
                group = self._gather()
            self._run(group)

    def _gather(self) -> list[_Request]:
        """(Under the lock.) The next batch: the oldest request and others of its size, up to max_size windows."""
        deadline = self._pending[0].at + self.max_wait_s
        while True:
            key = self._pending[0].key
            group: list[_Request] = []
            rows = 0
            for r in self._pending:  # the oldest first, up to max_size windows (one request always fits)
                if r.key == key and (not group or rows + r.rows <= self.max_size):
                    group.append(r)
                    rows += r.rows
            still_working = self._busy - len(self._pending)  # busy cameras that have not submitted yet
            left = deadline - time.monotonic()
            if rows >= self.max_size or still_working <= 0 or left <= 0 or self._closed:
                break
            self._cond.wait(left)
        for r in group:
            self._pending.remove(r)
        return group

    def _run(self, group: list[_Request]) -> None:
        t0 = time.perf_counter()
        rows = sum(r.rows for r in group)
        try:
            out = self._device_windows(group) if group[0].windows is not None else self._host(group)
            row = 0
            for r in group:  # a request may hold several windows (a camera's flush)
                r.result = out[row : row + r.rows]
                row += r.rows
        except Exception as exc:  # handed to every waiting camera, which reports it
            for r in group:
                r.error = exc
        finally:
            for r in group:
                r.done.set()
        s = self.stats
        s.batches += 1
        s.windows += rows
        s.largest = max(s.largest, rows)
        s.infer_s += time.perf_counter() - t0

    def _host(self, group: list[_Request]) -> np.ndarray:
        xs = [r.x for r in group if r.x is not None]
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)
        step = self.backend.capabilities.max_batch or len(x)  # a TensorRT profile's largest batch
        return np.concatenate([self.backend.infer(x[i : i + step]).copy()  # the backend reuses its output buffer
                               for i in range(0, len(x), step)])

    def _device_windows(self, group: list[_Request]) -> list[np.ndarray]:
        """One runner per frame size (its plane pool is of that size; they share the backend's
        executor and its graphs), holding the frames of every camera's window, so the next batch finds
        them there whichever cameras it has."""
        hw = cast(tuple[int, ...], group[0].key[1])
        runner = self._runners.get(hw)
        if runner is None:
            runner = self._runners[hw] = cast(DeviceBackend, self.backend).window_runner()
        windows = [w for r in group for w in r.windows or []]
        k = len(windows[0])
        runner.reserve(max(len({key for w in windows for key in w}), self._clients * (k + 1)))
        for r in group:
            for key, (pixels, sigmas) in (r.pixels or {}).items():
                runner.upload(key, pixels, sigmas)  # once per frame: a frame already there is only touched
        step = self.backend.capabilities.max_batch or len(windows)
        return [y for i in range(0, len(windows), step) for y in runner.denoise_many(windows[i : i + step])]

    def close(self) -> None:
        """Stop the batching thread (pending windows fail) and close the backend; idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)
        if self._thread.is_alive():  # still inside a backend call: closing under it would pull its buffers away
            log.warning("%s: the batching thread did not stop in 10 s; leaving the backend open", self.backend.name)
            return
        self.backend.close()


class BatchClient:
    """One camera's view of a :class:`BatchingBackend`: a Backend whose ``infer`` (or, on a GPU, whose
    window runner) joins a batch."""

    def __init__(self, owner: BatchingBackend) -> None:
        self._owner = owner
        b = owner.backend
        self.name, self.frames, self.target, self.stride = b.name, b.frames, b.target, b.stride
        self.noise_planes, self.map_curve = b.noise_planes, b.map_curve
        # batches are split by the owner: a camera may hand over any number of windows
        self.capabilities = Capabilities(device_windows=b.capabilities.device_windows)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """x: (n, K * block, H, W) float32 -> (n, 3, H, W) float32, computed in a batch with other cameras."""
        return self._owner._submit(x)

    def window_runner(self) -> _SharedWindows:
        """For the camera's Denoiser on a GPU backend: its windows join the shared runner's batches."""
        return _SharedWindows(self._owner)

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Mark this camera as working on a frame: batches wait (briefly) for its windows."""
        self._owner._set_busy(1)
        try:
            yield
        finally:
            self._owner._set_busy(-1)

    def close(self) -> None:
        """Nothing to do: the shared backend is closed by its owner."""


class _SharedWindows:
    """The window-runner calls a Denoiser makes (reserve, upload, denoise_many), collected per call
    and sent to the batching thread, which owns the real runner. Holds only the frames of the call
    in flight."""

    def __init__(self, owner: BatchingBackend) -> None:
        self._owner = owner
        self._pixels: dict[Hashable, tuple[np.ndarray, np.ndarray | None]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return False  # the Denoiser hands over every frame of its windows; the shared runner keeps what it has

    def reserve(self, planes: int) -> None:
        """The shared runner reserves for the whole batch."""

    def upload(self, key: Hashable, pixels: np.ndarray, sigmas: np.ndarray | None = None) -> None:
        check_pixels(pixels)  # a bad frame fails this camera here, not the batch it would join
        self._pixels[key] = (pixels, sigmas)

    def denoise_many(self, windows: Sequence[Sequence[Hashable]]) -> list[np.ndarray]:
        pixels, self._pixels = self._pixels, {}
        if not windows:
            return []
        missing = [k for w in windows for k in w if k not in pixels]
        if missing:
            raise KeyError(f"frames not uploaded: {missing[:4]}")
        return self._owner._submit_windows([list(w) for w in windows], pixels)


# ---------------------------------------------------------------------------------------------------
# One camera
# ---------------------------------------------------------------------------------------------------

class Camera:
    """One camera of a :class:`MultiCamera`: its source, temporal buffer (in its Denoiser), topic, metrics."""

    def __init__(self, cfg: CameraConfig, client: BatchClient, window: str | None, max_frames: int | None,
                 strength: float = 1.0) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.topic = cfg.effective_topic
        self.source_cfg = cfg.source_config()
        self.client = client
        self.denoiser = Denoiser(client, window, strength=strength)  # one temporal buffer per camera; inference shared
        self.metrics = Metrics()
        self.max_frames = max_frames
        self.source: Source | None = None
        self.state = "starting"  # starting, connecting, running, ended, failed
        self.error: StreamDenoiseError | None = None
        self.published = self.publish_dropped = 0
        self.rtsp_out: Any = None  # an RtspOutput when the camera has [rtsp_out] (set by MultiCamera)
        if not is_live(self.source_cfg.uri):
            self.source = self._open()  # a bad file path is a config error: raise now

    def _open(self) -> Source:
        from .sources import open_source

        return open_source(self.source_cfg)

    def _connect(self, stop: threading.Event) -> Source | None:
        """Open a live source, retrying with capped backoff while ``reconnect``; None when stopped."""
        from .sources import open_retrying

        self.state = "connecting"
        return open_retrying(self._open, self.source_cfg, stop)

    def run(self, stop: threading.Event, publish: Callable[[Camera, Frame], None]) -> None:
        """The worker: read, denoise, publish until the source ends, max_frames, or ``stop``."""
        try:
            if self.source is None:
                self.source = self._connect(stop)
                if self.source is None:
                    self.state = "ended"
                    return
            self.state = "running"
            denoise_stream(self.source, self.denoiser, self.metrics, stop, lambda f: publish(self, f),
                           max_frames=self.max_frames, poll_s=READ_POLL_S, busy=self.client.busy)
            self.state = "ended"
        except StreamDenoiseError as exc:
            self.state, self.error = "failed", exc
            log.error("%s: camera stopped: %s", self.name, exc)
        except Exception as exc:  # a bug must not take the other cameras down
            self.state, self.error = "failed", StreamDenoiseError(f"{self.name}: {exc}")
            log.exception("%s: camera worker failed", self.name)

    @property
    def connected(self) -> bool:
        return self.source is not None and self.source.stats.connected

    @property
    def fps(self) -> float | None:
        """The source's nominal frame rate when known."""
        return self.source.fps if self.source is not None else None

    def status_line(self) -> str:
        s = self.source.stats if self.source is not None else None
        line = f"{self.name} [{self.state}] " + self.metrics.status(
            s.frames_dropped if s else 0, s.reconnects if s else 0, self.publish_dropped)
        return f"{line} | {self.rtsp_out.status()}" if self.rtsp_out is not None else line

    def snapshot(self) -> dict[str, Any]:
        snap = self.metrics.snapshot()
        s = self.source.stats if self.source is not None else None
        snap.update(up=int(self.connected), failed=int(self.state == "failed"),
                    published=self.published, publish_dropped=self.publish_dropped, **source_counters(s))
        if self.rtsp_out is not None:
            snap.update(self.rtsp_out.snapshot())
        return snap

    def close(self) -> None:
        if self.source is not None:
            self.source.close()


# ---------------------------------------------------------------------------------------------------
# The deployment
# ---------------------------------------------------------------------------------------------------

class MultiCamera(Closing):
    """``with MultiCamera(cfg) as mc: mc.run(stop_event)``; resources close in reverse order.

    ``backend_factory`` builds the backend of each distinct (per-camera) model config; the default is
    :func:`stream_denoise.backends.create_backend`.
    """

    def __init__(self, cfg: DeploymentConfig,
                 backend_factory: Callable[[ModelConfig], Backend] | None = None) -> None:
        from .backends import create_backend
        from .publish import Publisher

        factory = backend_factory or create_backend
        self.cfg = cfg
        self._closers: list[Callable[[], object]] = []
        self._lock = threading.Lock()  # the PUB socket is used by one thread at a time
        self.health = None
        self.batchers: dict[ModelConfig, BatchingBackend] = {}
        self.cameras: list[Camera | RingCamera] = []
        self.workers: DecodeWorkers | None = None  # the multi-process runtime (stream_denoise.fleet)
        self.lanes: Lanes | None = None
        try:
            # bind first: subscribers connect while the models load
            self.publisher = Publisher(cfg.publish)
            self._closers.append(self.publisher.close)
            if cfg.runtime.decode_workers != 0:
                self._build_fleet(factory)
            for cam_cfg in cfg.cameras if self.workers is None else ():
                model = cam_cfg.model_config_for(cfg.model)
                key = _model_key(model)  # the window and strength are per camera, not built
                if key not in self.batchers:
                    batcher = BatchingBackend(factory(key), cfg.batch.max_size, cfg.batch.max_wait_ms / 1000)
                    self.batchers[key] = batcher
                    self._closers.append(batcher.close)
                cam = Camera(cam_cfg, self.batchers[key].client(), model.window, cfg.max_frames, model.strength)
                self.cameras.append(cam)
                self._closers.append(cam.close)
            self._open_rtsp_outputs()
            if cfg.metrics_port is not None:
                from .health import HealthServer

                self.health = HealthServer(cfg.metrics_port, self.snapshot, host=cfg.metrics_host)
                self._closers.append(self.health.close)
        except BaseException:
            self.close()
            raise
        self.ready = threading.Event()

    def _build_fleet(self, factory: Callable[[ModelConfig], Backend]) -> None:
        """Decode workers and their rings, inference lanes with a backend each (a CPU model) or a
        batching backend (a GPU model), a RingCamera per camera."""
        from .fleet import DecodeWorkers, LaneRouted, Lanes, RingCamera, default_workers
        from .sources import require_files

        cfg, rt = self.cfg, self.cfg.runtime
        require_files(c.source_config() for c in cfg.cameras)  # before any process starts
        cores = len(os.sched_getaffinity(0))
        firsts: dict[ModelConfig, Backend] = {}
        for cam_cfg in cfg.cameras:
            key = _model_key(cam_cfg.model_config_for(cfg.model))
            if key not in firsts:
                firsts[key] = factory(_lane_config(key))
                self._closers.append(firsts[key].close)
        gpu = any(b.capabilities.device_windows for b in firsts.values())
        lanes = rt.lanes or (min(64, len(cfg.cameras)) if gpu else cores)
        clients: dict[ModelConfig, Callable[[], Any]] = {}  # a camera's backend: a batch client or the lanes' router
        routes: list[tuple[LaneRouted, list[Backend]]] = []
        for key, first in firsts.items():
            if first.capabilities.device_windows:
                batcher = BatchingBackend(first, cfg.batch.max_size, cfg.batch.max_wait_ms / 1000)
                self.batchers[key] = batcher
                self._closers.append(batcher.close)
                clients[key] = batcher.client
            else:
                backends = [first]
                for _ in range(lanes - 1):
                    backends.append(factory(_lane_config(key)))
                    self._closers.append(backends[-1].close)
                router = LaneRouted(first)
                routes.append((router, backends))
                clients[key] = lambda router=router: router  # type: ignore[misc]
        windows = max(b.frames for b in firsts.values())
        self.workers = DecodeWorkers([(c.name, c.source_config()) for c in cfg.cameras],
                                     rt.decode_workers or default_workers(len(cfg.cameras)),
                                     slots=2 * windows + 6, max_frame=rt.max_frame, max_frames=cfg.max_frames)
        self._closers.append(self.workers.close)
        cams: list[RingCamera] = []
        for cam_cfg in cfg.cameras:
            model = cam_cfg.model_config_for(cfg.model)
            backend = clients[_model_key(model)]()
            busy = backend.busy if isinstance(backend, BatchClient) else contextlib.nullcontext
            src = cam_cfg.source_config()
            denoiser = Denoiser(backend, model.window, slab_frames=backend.frames + 3, strength=model.strength)  # lanes push one frame at a time
            cams.append(RingCamera(cam_cfg, self.workers.rings[cam_cfg.name], denoiser,
                                   live=is_live(src.uri) or src.realtime, busy=busy))
        self.cameras = list(cams)
        self.lanes = Lanes(cams, lanes, routes)

    def _open_rtsp_outputs(self) -> None:
        """Cameras with [rtsp_out] also stream over RTSP (those serving on one host:port share a server)."""
        cams = [c for c in self.cameras if c.cfg.rtsp_out is not None]
        if not cams:
            return
        from .rtsp_out import open_outputs

        def fps_of(cam: Camera | RingCamera) -> Callable[[], float | None]:
            return lambda: cam.fps

        requests = [(c.cfg.rtsp_out, c.name, fps_of(c)) for c in cams if c.cfg.rtsp_out is not None]
        for cam, out in zip(cams, open_outputs(requests)):
            cam.rtsp_out = out
            self._closers.append(out.close)

    def camera(self, name: str) -> Camera | RingCamera:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(name)

    def run(self, stop: threading.Event | None = None) -> dict[str, Metrics]:
        """Run every camera until all have ended or ``stop`` is set; metrics per camera name.

        Raises the first camera's error when every camera failed.
        """
        stop = stop or threading.Event()
        if self.lanes is not None and self.workers is not None:
            self.workers.start()
            lanes = self.lanes
            workers = [threading.Thread(target=lanes.run, args=(stop, self._publish), name="lanes", daemon=True)]
        else:
            workers = [threading.Thread(target=cam.run, args=(stop, self._publish), name=f"camera:{cam.name}",
                                        daemon=True) for cam in self.cameras if isinstance(cam, Camera)]
        status_stop = threading.Event()
        status = threading.Thread(target=self._status_loop, args=(status_stop,), name="status", daemon=True)
        for w in workers:
            w.start()
        status.start()
        self.ready.set()
        log.info("running %d camera(s) -> %s, %s", len(self.cameras), self.publisher.endpoint,
                 f"{self.lanes.lanes} inference lane(s), {self.workers.workers} decode process(es)"
                 if self.lanes is not None and self.workers is not None
                 else f"{len(self.batchers)} model(s), batches of up to {self.cfg.batch.max_size}")
        try:
            while any(w.is_alive() for w in workers) and not stop.is_set():
                for w in workers:
                    w.join(timeout=0.1)
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=30)
            status_stop.set()
            status.join(timeout=5)
            for line in self.status_lines():
                log.info("done: %s", line)
        failed = [c for c in self.cameras if c.state == "failed"]
        if failed and len(failed) == len(self.cameras) and failed[0].error is not None:
            raise failed[0].error
        return {c.name: c.metrics for c in self.cameras}

    def _publish(self, cam: Camera | RingCamera, frame: Frame) -> None:
        t0 = time.perf_counter()
        with self._lock:
            sent = self.publisher.send(frame, cam.topic)
        now = time.time()
        m = cam.metrics
        if sent:
            cam.published += 1
        else:
            cam.publish_dropped += 1
        if cam.rtsp_out is not None:
            cam.rtsp_out.send(frame)  # never blocks: a bounded queue to its encoder thread
        m.latency["publish"].add(time.perf_counter() - t0)
        m.latency["e2e"].add(now - frame.captured_at)
        m.frames_out += 1
        m.last_output_at = now

    def _status_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.cfg.status_interval_s):
            for line in self.status_lines():
                log.info("%s", line)

    def status_lines(self) -> list[str]:
        """One line per camera and one per shared model (batch sizes)."""
        lines = [cam.status_line() for cam in self.cameras]
        if self.lanes is not None and self.workers is not None:
            lines.append(f"runtime: {self.workers.workers} decode process(es), {self.workers.restarts} restarted; "
                         f"{self.lanes.lanes} lane(s), frames per lane {self.lanes.turns}")
        for model, b in self.batchers.items():
            s = b.stats
            lines.append(f"model {model.model} ({b.backend.name}): {s.batches} batches, mean size {s.mean_size:.2f}, "
                         f"largest {s.largest}")
        return lines

    def snapshot(self) -> dict[str, Any]:
        """Totals (``frames_out``, ``last_output_at`` drive /healthz: healthy while any camera publishes)
        and each camera's own snapshot under ``camera`` (Prometheus: ``camera_frames_out{camera="gate"}``)."""
        cams = {c.name: c.snapshot() for c in self.cameras}
        return {
            "cameras": len(cams),
            "cameras_up": sum(int(s["up"]) for s in cams.values()),
            "cameras_failed": sum(int(s["failed"]) for s in cams.values()),
            "frames_in": sum(int(s["frames_in"]) for s in cams.values()),
            "frames_out": sum(int(s["frames_out"]) for s in cams.values()),
            "last_output_at": max((float(s["last_output_at"]) for s in cams.values()), default=0.0),
            "publish_sent": self.publisher.sent,
            "publish_dropped": self.publisher.dropped,
            "batches": sum(b.stats.batches for b in self.batchers.values()),
            "batch_windows": sum(b.stats.windows for b in self.batchers.values()),
            "camera": cams,
        }


def _model_key(model: ModelConfig) -> ModelConfig:
    """Cameras whose models differ only in the window or strength share a backend (both are per camera)."""
    return model.model_copy(update={"window": None, "strength": 1.0})


def _lane_config(key: ModelConfig) -> ModelConfig:
    """A lane's backend: one thread, no lanes of its own (the lanes run side by side)."""
    return key.model_copy(update={"threads": 1, "onnxruntime": key.onnxruntime.model_copy(update={"lanes": 1})})
