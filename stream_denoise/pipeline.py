"""source -> temporal buffer -> denoiser -> (publisher, recorder), as overlapping stages.

Threads: the source's reader thread decodes; the inference stage (the caller's thread) pulls the
newest frame, denoises it and hands the result to the publish stage through a bounded queue; the
publish thread sends it over ZeroMQ (never blocking) and records it. ONNX Runtime, PyAV and
ZeroMQ release the GIL, so the stages overlap and throughput is set by the slowest one. With
``rtsp_out`` the publish thread also hands each frame to the RTSP output's own encoder thread
(a bounded queue, never blocking; see :mod:`stream_denoise.rtsp_out`).

Drop policy: live sources drop at the source (newest wins). Between inference and publishing, a
full queue drops the *oldest* denoised frame (counted in ``dropped_queue``) for live sources and
blocks for files (a file is processed completely).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .config import RunConfig
from .denoiser import Denoiser
from .errors import SourceTimeout
from .frame import Frame
from .metrics import Metrics
from .resources import Closing
from .sources.base import ready_frames

if TYPE_CHECKING:
    from .sources import Source

log = logging.getLogger(__name__)

_END = None


def counted_frames(source: Source, m: Metrics, stop: threading.Event, poll_s: float) -> Iterator[Frame]:
    """Frames of ``source`` until it ends or ``stop`` is set, re-checking ``stop`` every ``poll_s``;
    counts frames in, source timeouts and the wait for each frame in ``m``."""
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            frame = source.read(timeout=poll_s)
        except SourceTimeout:
            m.source_timeouts += 1
            continue
        if frame is None:
            return
        m.latency["wait"].add(time.perf_counter() - t0)
        m.frames_in += 1
        yield frame


class Pipeline(Closing):
    """``with Pipeline(cfg) as p: p.run(stop_event)``; resources close in reverse order."""

    def __init__(self, cfg: RunConfig, denoiser: Denoiser | None = None) -> None:
        from .backends import create_backend
        from .sources import open_source

        self.cfg = cfg
        self.metrics = Metrics()
        self._closers: list = []
        self.health = None
        self.rtsp_out = None
        try:
            if denoiser is None:
                backend = create_backend(cfg.model)
                self._closers.append(backend.close)  # created here, closed here
                denoiser = Denoiser(backend, cfg.model.window)
            self.denoiser = denoiser
            self.source = open_source(cfg.source)
            self._closers.append(self.source.close)
            self.publisher = None
            if cfg.publish is not None:
                from .publish import Publisher

                self.publisher = Publisher(cfg.publish)
                self._closers.append(self.publisher.close)
            if cfg.rtsp_out is not None:  # the cleaned stream over RTSP too (serve or push)
                from .rtsp_out import open_outputs

                source = self.source
                (self.rtsp_out,) = open_outputs([(cfg.rtsp_out, cfg.source.name or "stream", lambda: source.fps)])
                self._closers.append(self.rtsp_out.close)
            if cfg.metrics_port is not None:
                from .health import HealthServer

                self.health = HealthServer(cfg.metrics_port, self.snapshot)
                self._closers.append(self.health.close)
        except BaseException:
            self.close()
            raise
        self.lossless = not getattr(self.source, "live", False)
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=cfg.queue_size)
        self._writers: dict[str, object] = {}
        self.ready = threading.Event()

    def run(self, stop: threading.Event | None = None) -> Metrics:
        """Process until the source ends, ``max_frames`` are published, or ``stop`` is set."""
        stop = stop or threading.Event()
        pub = threading.Thread(target=self._publish_loop, args=(stop,), name="publish", daemon=True)
        status = threading.Thread(target=self._status_loop, args=(stop,), name="status", daemon=True)
        pub.start()
        status.start()
        self.ready.set()
        log.info("running: %s -> %s%s (window %s, %d frame(s) look-ahead)", self.source.name,
                 self.cfg.publish.endpoint if self.cfg.publish else "-",
                 f" + {self.cfg.output.path}" if self.cfg.output.path else "",
                 self.denoiser.window, self.denoiser.latency_frames)
        try:
            self._infer_loop(stop)
        finally:
            self._put(_END, stop, force=True)
            pub.join(timeout=30)
            stop.set()
            status.join(timeout=5)
            log.info("done: %s", self._status_line())
        return self.metrics

    def _infer_loop(self, stop: threading.Event) -> None:
        m, limit = self.metrics, self.cfg.max_frames
        lanes = self.denoiser.lanes
        for frame in counted_frames(self.source, m, stop, poll_s=0.5):
            frames = [frame]
            if lanes > 1:  # frames already decoded go with it, one per lane (files; live: only when behind)
                extra = ready_frames(self.source, min(lanes - 1, limit - m.frames_in if limit is not None else lanes))
                m.frames_in += len(extra)
                frames += extra
            if self.cfg.output.input_path is not None:
                for f in frames:
                    self._record("input", self.cfg.output.input_path, f)
            self._emit(self.denoiser.push_many(frames) if len(frames) > 1 else self.denoiser.push(frame), stop)
            if limit is not None and m.frames_in >= limit:
                break  # the flush below publishes the look-ahead frames: exactly max_frames out
        self._emit(self.denoiser.flush(), stop)

    def _emit(self, frames: list[Frame], stop: threading.Event) -> None:
        t = self.denoiser.times
        for f in frames:
            for k in ("pre", "infer", "post"):
                self.metrics.latency[k].add(getattr(t, k))
            self._put(f, stop)

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
            t0 = time.perf_counter()
            if self.publisher is not None:
                self.publisher.send(item)
            if self.rtsp_out is not None:
                self.rtsp_out.send(item)  # never blocks: a bounded queue to its encoder thread
            if self.cfg.output.path is not None:
                self._record("output", self.cfg.output.path, item)
            now = time.time()
            m.latency["publish"].add(time.perf_counter() - t0)
            m.latency["e2e"].add(now - item.captured_at)
            m.frames_out += 1
            m.last_output_at = now

    def _record(self, kind: str, path: Path, frame: Frame) -> None:
        from .video_writer import VideoWriter

        writer = self._writers.get(kind)
        if writer is None:
            fps = getattr(self.source, "fps", None) or 25.0
            writer = self._writers[kind] = VideoWriter(path, frame.width, frame.height, fps)
            self._closers.append(writer.close)
        assert isinstance(writer, VideoWriter)
        if (frame.width, frame.height) != (writer.width, writer.height):
            log.warning("frame size changed to %dx%d: not recorded in %s (recording is %dx%d)",
                        frame.width, frame.height, path, writer.width, writer.height)
            return
        writer.write(frame.pixels)

    def _status_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.cfg.status_interval_s):
            log.info("%s", self._status_line())

    def _status_line(self) -> str:
        s = self.source.stats
        pub_drops = self.publisher.dropped if self.publisher is not None else 0
        line = self.metrics.status(s.frames_dropped, s.reconnects, pub_drops)
        return f"{line} | {self.rtsp_out.status()}" if self.rtsp_out is not None else line

    def snapshot(self) -> dict[str, float | int]:
        """Counters for health checks and Prometheus: pipeline, source and publisher."""
        snap = self.metrics.snapshot()
        s = self.source.stats
        snap.update(source_frames_decoded=s.frames_decoded, source_frames_dropped=s.frames_dropped,
                    source_reconnects=s.reconnects, source_decode_errors=s.decode_errors,
                    source_connected=int(s.connected))
        if self.publisher is not None:
            snap.update(publish_sent=self.publisher.sent, publish_dropped=self.publisher.dropped)
        if self.rtsp_out is not None:
            snap.update(self.rtsp_out.snapshot())
        return snap
