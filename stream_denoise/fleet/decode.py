"""Decode worker processes: each serves several cameras and writes their frames into shared-memory rings.

A worker runs one thread per camera: open the source (live ones retried with capped backoff,
``sources.open_retrying``), read it through the one camera loop's reader (``camera_loop.counted_frames``:
timeouts and waits counted), copy each frame into the camera's :class:`~.ring.FrameRing` and
publish the source's counters there. Decoding (PyAV/FFmpeg, OpenCV) thus runs beside inference
on other cores, and never under the inference process's interpreter lock.

:class:`DecodeWorkers` (in the inference process) owns the rings, starts the workers (``spawn``: no
inherited threads or inference sessions), and watches them: a worker that dies is started again
with the same cameras and rings within ``RESTART_S``, its cameras continuing in a new segment (a
file resumes after the last frame it wrote: nothing lost, nothing twice). One log line says so.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..backoff import Backoff
from ..config import SourceConfig
from .ring import FrameRing, RingSpec

log = logging.getLogger(__name__)

POLL_S = 0.2  # a camera thread re-checks the stop flag at least this often
WATCH_S = 0.2  # the supervisor looks at its workers this often
STEADY_S = 30.0  # a worker that ran this long before dying is restarted without delay
SEGMENTS_PER_START = 1 << 20  # a restarted worker's segments start this far above the previous one's


@dataclass(frozen=True)
class Feed:
    """One camera as its worker gets it (picklable)."""

    ring: RingSpec
    source: SourceConfig
    max_frames: int | None
    segment_base: int = 0  # added to the source's segments (a restart starts a new segment)
    skip: int = 0  # frames of a file already written by a previous worker


def serve(worker: int, feeds: list[Feed], stop: Any, log_level: int) -> None:
    """A worker process: one thread per camera until every camera ended or ``stop`` is set; this
    thread publishes each camera's source counters into its ring every ``REPORT_S`` (a camera that
    stalls shows as disconnected even while no frame comes)."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s decode-{worker}: %(message)s")
    cams = [_Camera(f) for f in feeds]
    threads = [threading.Thread(target=c.run, args=(stop,), name=f"decode:{c.name}", daemon=True) for c in cams]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) and not stop.is_set():
        for c in cams:
            c.report()
        time.sleep(REPORT_S)
    for t in threads:
        t.join(5)


REPORT_S = 0.1


class _Camera:
    """One camera in a decode worker: its source, ring and counters."""

    def __init__(self, feed: Feed) -> None:
        from ..metrics import Metrics
        from ..sources import Source

        self.feed, self.name = feed, feed.ring.camera
        self.ring = FrameRing(feed.ring)
        self.source: Source | None = None
        self.state = "connecting"
        self.m = Metrics()
        self._closed = False

    def report(self) -> None:
        if self._closed:
            return
        source = self.source
        s = source.stats if source is not None else None
        self.ring.report(decoded=s.frames_decoded if s else 0, dropped=s.frames_dropped if s else 0,
                         reconnects=s.reconnects if s else 0, decode_errors=s.decode_errors if s else 0,
                         connected=bool(s and s.connected), timeouts=self.m.source_timeouts, state=self.state,
                         fps=source.fps if source is not None else None,
                         last_frame_at=s.last_frame_at if s else None)

    def run(self, stop: Any) -> None:
        from ..camera_loop import counted_frames
        from ..errors import StreamDenoiseError
        from ..sources import is_live, open_retrying, open_source

        feed, ring, cfg, name = self.feed, self.ring, self.feed.source, self.name
        lossless = not is_live(cfg.uri) and not cfg.realtime
        try:
            self.report()
            self.source = open_retrying(lambda: open_source(cfg), cfg, stop) if is_live(cfg.uri) else open_source(cfg)
            if self.source is None:
                return
            self.state = "running"
            skip, written, warned = feed.skip, 0, False
            for frame in counted_frames(self.source, self.m, stop, POLL_S):
                if skip:
                    skip -= 1
                    continue
                if ring.write(frame, feed.segment_base + frame.segment, lossless=lossless, stop=stop):
                    written += 1
                elif ring.too_large == 1 and not warned:
                    warned = True
                    log.warning("%s: a %dx%d frame is larger than [runtime] max_frame %dx%d: dropped (counted); "
                                "raise max_frame", name, frame.width, frame.height, *feed.ring.max_frame)
                if feed.max_frames is not None and feed.skip + written >= feed.max_frames:
                    break
            self.state = "ended"
            if self.source.stats.problem:
                log.warning("%s: %s", name, self.source.stats.problem)
        except StreamDenoiseError as exc:
            self.state = "failed"
            ring.fail(f"{type(exc).__name__}: {exc}")
            log.error("%s: camera stopped: %s", name, exc)
        except Exception as exc:  # a bug must not take the worker's other cameras down
            self.state = "failed"
            ring.fail(f"StreamDenoiseError: {name}: {exc}")
            log.exception("%s: decoding failed", name)
        finally:
            if self.state == "connecting":
                self.state = "ended"  # stopped before it connected
            self.report()
            ring.end()
            if self.source is not None:
                self.source.close()
            self._closed = True
            ring.close()


class DecodeWorkers:
    """Owns the rings of ``cameras`` and ``workers`` decode processes serving them (cameras dealt
    round-robin). ``start()``, then the inference lanes read the rings; ``close()`` stops everything."""

    RESTART_S = 0.5  # how soon a dead worker is started again

    def __init__(self, cameras: list[tuple[str, SourceConfig]], workers: int, *, slots: int,
                 max_frame: tuple[int, int], max_frames: int | None) -> None:
        self._ctx = mp.get_context("spawn")
        self._stop = self._ctx.Event()
        self.rings: dict[str, FrameRing] = {}
        try:
            for name, _ in cameras:
                self.rings[name] = FrameRing.create(name, slots, max_frame, self._ctx)
        except BaseException:
            self.close()
            raise
        n = max(1, min(workers, len(cameras)))
        self._groups = [[c for i, c in enumerate(cameras) if i % n == w] for w in range(n)]
        self._max_frames = max_frames
        self._procs: list[Any] = [None] * n
        self._starts = [0] * n
        self._started_at = [0.0] * n
        self._backoff = [Backoff(self.RESTART_S, 10.0) for _ in range(n)]
        self.restarts = 0
        self._watch_stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="decode-watch", daemon=True)

    @property
    def workers(self) -> int:
        return len(self._groups)

    def start(self) -> None:
        for w in range(self.workers):
            self._spawn(w)
        self._watcher.start()
        log.info("decoding %d camera(s) in %d worker process(es)", len(self.rings), self.workers)

    def _spawn(self, w: int) -> None:
        base = self._starts[w] * SEGMENTS_PER_START
        feeds = []
        for name, src in self._groups[w]:
            ring = self.rings[name]
            spec = ring.restart(self._ctx)
            resume = ring.written if not src.loop and self._starts[w] else 0  # a file goes on where it was
            feeds.append(Feed(spec, src, self._max_frames, base, resume if not _is_live(src) else 0))
        p = self._ctx.Process(target=serve, args=(w, feeds, self._stop, logging.getLogger().getEffectiveLevel()),
                              name=f"decode-{w}", daemon=True)
        p.start()
        self._procs[w] = p
        self._started_at[w] = time.monotonic()
        self._starts[w] += 1

    def _watch(self) -> None:
        while not self._watch_stop.wait(WATCH_S):
            for w, p in enumerate(self._procs):
                if p is None or p.is_alive() or self._stop.is_set():
                    continue
                if p.exitcode == 0 and all(self.rings[name].writer_done for name, _ in self._groups[w]):
                    continue  # finished its cameras
                names = ", ".join(name for name, _ in self._groups[w])
                hint = (" (SIGBUS: /dev/shm is full; give the container more --shm-size or lower [runtime] max_frame)"
                        if p.exitcode == -signal.SIGBUS else "")
                if time.monotonic() - self._started_at[w] > STEADY_S:
                    self._backoff[w].reset()  # it had been running fine: come back at once
                delay = self._backoff[w].next()  # one that dies at start-up again and again: less and less often
                log.error("decode worker %d (cameras %s) died (exit code %s)%s; starting it again in %.1f s", w, names,
                          p.exitcode, hint, delay)
                if self._watch_stop.wait(delay):
                    return
                if self._stop.is_set():
                    return
                p.join(0)
                self.restarts += 1
                self._spawn(w)

    def pid(self, worker: int) -> int | None:
        p = self._procs[worker]
        return p.pid if p is not None else None

    def worker_of(self, camera: str) -> int:
        return next(w for w, group in enumerate(self._groups) if any(name == camera for name, _ in group))

    def close(self) -> None:
        """Stop the workers (they finish their current frame), then free the rings."""
        self._stop.set()
        self._watch_stop.set()
        if self._watcher.is_alive():
            self._watcher.join(2)
        for p in self._procs:
            if p is not None:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(2)
        for ring in self.rings.values():
            ring.close()


def _is_live(src: SourceConfig) -> bool:
    from ..sources import is_live

    return is_live(src.uri) or src.realtime


def default_workers(cameras: int) -> int:
    """One decode process per core, at most one per camera."""
    return max(1, min(cameras, len(os.sched_getaffinity(0))))
