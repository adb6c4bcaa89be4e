"""source -> temporal buffer -> denoiser -> (publisher, recorder), as overlapping stages.

Threads: the source's reader thread decodes; the inference stage (the caller's thread) pulls the
newest frame, denoises it and hands the result to the publish stage through a bounded queue; the
publish thread sends it over ZeroMQ (never blocking) and records it. ONNX Runtime, PyAV and
ZeroMQ release the GIL, so the stages overlap and throughput is set by the slowest one. With
``rtsp_out`` the publish thread also hands each frame to the RTSP output's own encoder thread
(a bounded queue, never blocking; see :mod:`stream_denoise.rtsp_out`).

Drop policy: live sources drop at the source (newest wins). Between inference and publishing, a
full queue drops the *oldest* denoised frame (counted in ``dropped_queue``) for live sources and
blocks for files (a file is processed completely). Publishing a live source never waits: a
subscriber that falls behind loses frames at its own queue (``sndhwm``), seen there as ``seq``
gaps. A file is published losslessly (XPUB, ``XPUB_NODROP``): each frame waits until every
subscriber has room; a looping file waits at most one frame interval, then drops the frame for
every subscriber and counts it in ``publish_dropped``.

With ``adapt`` (``run --adapt``) the inference stage also shows each input frame to the adapter
and, between two frames, swaps in a better model it has trained in the background
(:mod:`stream_denoise.adapt`).

Recordings (``output.path``, ``output.input_path``) keep the stream's timing
(:class:`~stream_denoise.video_writer.StreamClock`), are written as ``NAME.PID.part`` and renamed
when finished, and go on in a new file when the frame size changes.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from .camera_loop import denoise_stream, source_counters
from .config import RunConfig
from .denoiser import Denoiser
from .errors import SourceError, StreamDenoiseError
from .frame import Frame
from .metrics import Metrics
from .resources import Closing

if TYPE_CHECKING:
    from .adapt import Adapter
    from .adapt.trainer import Train
    from .video_writer import Recording, StreamClock

log = logging.getLogger(__name__)

_END = None


class Pipeline(Closing):
    """``with Pipeline(cfg) as p: p.run(stop_event)``; resources close in reverse order."""

    def __init__(self, cfg: RunConfig, denoiser: Denoiser | None = None, adapt_train: Train | None = None) -> None:
        from .backends import create_backend
        from .sources import open_source
        from .video_writer import Recording, StreamClock, check_video_path

        self.cfg = cfg
        self.metrics = Metrics()
        self._closers: list = []
        self.health = None
        self._recordings: dict[str, tuple[Recording, StreamClock]] = {}
        self.rtsp_out = None
        self.adapter: Adapter | None = None
        try:
            for path in (cfg.output.path, cfg.output.input_path):
                if path is not None:
                    check_video_path(path)  # before the model loads and the camera connects
            if denoiser is None:
                backend = create_backend(cfg.model)
                self._closers.append(backend.close)  # created here, closed here
                denoiser = Denoiser(backend, cfg.model.window, strength=cfg.model.strength)
            self.denoiser = denoiser
            if cfg.adapt is not None:  # run --adapt (issue 26): learns the camera, swaps models between frames
                from .adapt import Adapter
                from .adapt.trainer import fine_tune_candidate

                self.adapter = Adapter(cfg.adapt, cfg.model, cfg.source.display_name, denoiser,
                                       train=adapt_train or fine_tune_candidate)
                self._closers.append(self.adapter.close)
            self.source = open_source(cfg.source)
            self._closers.append(self.source.close)
            self.lossless = not self.source.live
            fps = self.source.fps or 25.0
            # a file is published losslessly: every frame waits for the subscribers (a looping one: one frame interval)
            self._publish_wait_s = 0.0 if not self.lossless else 1 / fps if cfg.source.loop else math.inf
            self.publisher = None
            if cfg.publish is not None:
                from .publish import Publisher

                self.publisher = Publisher(cfg.publish, lossless=self.lossless)
                self._closers.append(self.publisher.close)
            for kind, path in (("input", cfg.output.input_path), ("output", cfg.output.path)):
                if path is not None:
                    rec = Recording(path, fps)
                    self._recordings[kind] = (rec, StreamClock())
                    self._closers.append(rec.close)
            if cfg.rtsp_out is not None:  # the cleaned stream over RTSP too (serve or push)
                from .rtsp_out import open_outputs

                source = self.source
                (self.rtsp_out,) = open_outputs([(cfg.rtsp_out, cfg.source.name or "stream", lambda: source.fps)])
                self._closers.append(self.rtsp_out.close)
            if cfg.metrics_port is not None:
                from .health import HealthServer

                self.health = HealthServer(cfg.metrics_port, self.snapshot, host=cfg.metrics_host)
                self._closers.append(self.health.close)
        except BaseException:
            self.close()
            raise
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=cfg.queue_size)
        self._failure: StreamDenoiseError | None = None  # of the publish thread, raised by run()
        self.ready = threading.Event()

    def run(self, stop: threading.Event | None = None) -> Metrics:
        """Process until the source ends, ``max_frames`` are published, or ``stop`` is set."""
        stop = stop or threading.Event()
        pub = threading.Thread(target=self._publish_loop, args=(stop,), name="publish", daemon=True)
        status = threading.Thread(target=self._status_loop, args=(stop,), name="status", daemon=True)
        pub.start()
        status.start()
        if self.adapter is not None:
            self.adapter.start()
        self.ready.set()
        log.info("running: %s -> %s%s (window %s, %d frame(s) look-ahead)", self.source.name,
                 self.cfg.publish.endpoint if self.cfg.publish else "-",
                 f" + {self.cfg.output.path}" if self.cfg.output.path else "",
                 self.denoiser.window, self.denoiser.latency_frames)
        try:
            self._infer_loop(stop)
            ended_by_itself = not stop.is_set()
        finally:
            self._put(_END, stop, force=True)
            pub.join(timeout=30)
            stop.set()
            status.join(timeout=5)
            log.info("done: %s", self._status_line(final=True))
            for rec, _ in self._recordings.values():
                rec.close()  # finished here, so a failure to finish reaches the caller
        if self._failure is not None:
            raise self._failure
        problem = self.source.stats.problem
        if ended_by_itself and self.metrics.frames_in == 0:
            raise SourceError(f"{self.source.name}: no frame could be decoded{f' ({problem})' if problem else ''}")
        if problem is not None:
            log.warning("%s: %s; published the %d frames that decoded", self.source.name, problem, self.metrics.frames_out)
        return self.metrics

    def _infer_loop(self, stop: threading.Event) -> None:
        adapter, recording = self.adapter, "input" in self._recordings

        def noisy(f: Frame) -> None:  # each frame before it is denoised
            if recording:
                self._record("input", f)
            if adapter is not None:  # --adapt: sample the input
                adapter.observe(f)

        denoise_stream(self.source, self.denoiser, self.metrics, stop, lambda f: self._put(f, stop),
                       max_frames=self.cfg.max_frames, poll_s=0.5,
                       record_input=noisy if recording or adapter is not None else None,
                       between_frames=(lambda: adapter.swap_into(self.denoiser)) if adapter is not None else None)

    def _put(self, item: Frame | None, stop: threading.Event, force: bool = False) -> None:
        while True:
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if not (self.lossless or force):
                    try:
                        self._queue.get_nowait()
                        self.metrics.dropped_queue += 1
                    except queue.Empty:
                        pass
                elif stop.is_set() and not force:
                    return

    def _publish_loop(self, stop: threading.Event) -> None:
        m = self.metrics
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if self._failure is not None:
                continue  # drain: the inference stage never blocks on a dead publish stage
            t0 = time.perf_counter()
            try:
                if self.publisher is not None:
                    self.publisher.send(item, wait_s=self._publish_wait_s, stop=stop)
                if self.rtsp_out is not None:
                    self.rtsp_out.send(item)  # never blocks: a bounded queue to its encoder thread
                self._record("output", item)
            except StreamDenoiseError as exc:  # a full disk, a closed socket: stop, and say why
                self._failure = exc
                stop.set()
                continue
            now = time.time()
            m.latency["publish"].add(time.perf_counter() - t0)
            m.latency["e2e"].add(now - item.captured_at)
            m.frames_out += 1
            m.last_output_at = now

    def _record(self, kind: str, frame: Frame) -> None:
        entry = self._recordings.get(kind)
        if entry is not None:
            rec, clock = entry
            rec.write(frame.pixels, clock(frame.pts, frame.captured_at, frame.segment))

    def _status_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.cfg.status_interval_s):
            log.info("%s", self._status_line())

    def _status_line(self, final: bool = False) -> str:
        s = self.source.stats
        pub_drops = self.publisher.dropped if self.publisher is not None else 0
        line = self.metrics.status(s.frames_dropped, s.reconnects, pub_drops, final=final)
        line = f"{line} | {self.rtsp_out.status()}" if self.rtsp_out is not None else line
        return f"{line} | {self.adapter.status()}" if self.adapter is not None else line

    def snapshot(self) -> dict[str, Any]:
        """Counters for health checks and Prometheus: pipeline, source and publisher."""
        snap = self.metrics.snapshot()
        snap.update(source_counters(self.source.stats), source_connected=int(self.source.stats.connected))
        if self.publisher is not None:
            snap.update(publish_sent=self.publisher.sent, publish_dropped=self.publisher.dropped)
        if self.rtsp_out is not None:
            snap.update(self.rtsp_out.snapshot())
        if self.adapter is not None:
            snap.update(self.adapter.snapshot())
        return snap
