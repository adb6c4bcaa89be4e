"""The threaded source shared by every kind of input.

A reader thread pulls ``(pixels, pts)`` from a :class:`Stream` (PyAV container or OpenCV capture),
stamps them into :class:`~stream_denoise.frame.Frame` objects and hands them to the consumer through a
bounded hand-off: a small queue that blocks the reader (files: every frame, in order) or a one-slot
mailbox where the newest frame wins (live: drops counted). Reconnects, loops, pacing and rate limits
live here; the third-party libraries live in ``media.py`` (PyAV) and ``camera.py`` (OpenCV).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import numpy as np

from ..backoff import Backoff
from ..config import SourceConfig
from ..errors import SourceError, SourceTimeout
from ..frame import Frame

log = logging.getLogger(__name__)

FILE_QUEUE_SIZE = 4
_POLL_S = 0.1  # how often a blocked hand-off re-checks the stop flag


@dataclass
class SourceStats:
    """Counters written by the reader thread only; safe to read from any thread."""

    frames_decoded: int = 0
    frames_dropped: int = 0  # decoded but never delivered (newest-wins, max_fps, flushed at a drop)
    reconnects: int = 0  # successful reconnects after a drop
    decode_errors: int = 0  # packets that failed to decode and were skipped
    last_frame_at: float | None = None  # time.time() of the last decoded frame
    connected: bool = False
    problem: str | None = None  # files: why the input ended early ("truncated: ..."), for the consumer to report


class Stream(Protocol):
    """One open connection to a video input."""

    fps: float | None  # nominal frame rate, for pacing files without pts

    def frames(self, stats: SourceStats) -> Generator[tuple[np.ndarray, float | None], None, None]:
        """Decoded frames as ``(pixels (H, W, 3) uint8 RGB C-contiguous, pts seconds or None)``.

        Skips undecodable packets (``stats.decode_errors += 1``). Ends at end of stream; raises
        SourceError (SourceTimeout for a stalled read) on failure.
        """
        ...

    def close(self) -> None: ...


Opener = Callable[[], Stream]


class Source(Protocol):
    """What ``open_source`` returns: a context manager and iterable of Frame (pixels (H, W, 3) uint8 RGB)."""

    name: str
    stats: SourceStats
    live: bool  # True: newest frame wins and frames may be dropped; False: every frame, in order
    fps: float | None  # nominal frame rate of the input when known

    def read(self, timeout: float | None = None) -> Frame | None: ...
    def __iter__(self) -> Iterator[Frame]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Source: ...
    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None: ...


def ready_frames(source: Source, n: int) -> list[Frame]:
    """Up to ``n`` frames ``source`` has already decoded, without waiting (a file's read-ahead; a
    live source only when the consumer is behind). Its end or an error is left for the next ``read``."""
    out: list[Frame] = []
    while len(out) < n:
        try:
            frame = source.read(timeout=0)
        except (SourceTimeout, SourceError):
            break
        if frame is None:
            break
        out.append(frame)
    return out


def redact(uri: str) -> str:
    """``uri`` without the password of ``scheme://user:password@host`` (for logs and messages)."""
    scheme, sep, rest = uri.partition("://")
    auth, at, host = rest.partition("@")
    if sep and at and ":" in auth and "/" not in auth:
        return f"{scheme}://{auth.split(':', 1)[0]}:***@{host}"
    return uri


class _Handoff:
    """Bounded hand-off from the reader to the consumer.

    ``capacity=1, newest_wins=True``: a mailbox; a put replaces an unconsumed frame (counted as a drop).
    ``newest_wins=False``: a queue; a put waits (re-checking ``stopped``) until there is room.
    """

    def __init__(self, capacity: int, newest_wins: bool) -> None:
        self._items: deque[Frame] = deque()
        self._capacity = capacity
        self._newest_wins = newest_wins
        self._cond = threading.Condition()
        self._ended = False

    def put(self, frame: Frame, stopped: threading.Event) -> int:
        """Hand over ``frame``; return how many unconsumed frames it displaced."""
        with self._cond:
            dropped = 0
            if self._newest_wins:
                while len(self._items) >= self._capacity:
                    self._items.popleft()
                    dropped += 1
            else:
                while len(self._items) >= self._capacity and not stopped.is_set():
                    self._cond.wait(_POLL_S)
                if stopped.is_set():
                    return 0
            self._items.append(frame)
            self._cond.notify_all()
            return dropped

    def get(self, timeout: float) -> Frame | None:
        """The next frame, or None when ended and empty. Raises TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._ended:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self._cond.wait(left)
            frame = self._items.popleft()
            self._cond.notify_all()
            return frame

    def clear(self) -> int:
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return n

    def end(self, discard: bool = False) -> None:
        """No more frames will come; wake the consumer (dropping what is left when ``discard``)."""
        with self._cond:
            self._ended = True
            if discard:
                self._items.clear()
            self._cond.notify_all()


class ThreadedSource:
    """A context manager and iterable of :class:`Frame` (pixels (H, W, 3) uint8 RGB), fed by a thread.

    ``live=True``: newest frame wins (one-slot mailbox); a failure or end of stream is a drop and is
    followed by reconnects with capped exponential backoff while ``cfg.reconnect``.
    ``live=False``: every frame in order through a queue of :data:`FILE_QUEUE_SIZE`; end of stream ends
    the iteration (or restarts when ``cfg.loop``).
    ``finite``: end of stream is a real end (files), not a disconnect.
    ``pace``: sleep between frames to follow their pts (realtime files).

    The first open happens in the constructor, so a bad source raises SourceError/SourceTimeout there.
    """

    def __init__(self, cfg: SourceConfig, opener: Opener, *, live: bool, finite: bool, pace: bool = False) -> None:
        self.cfg = cfg
        self.name = cfg.name or redact(cfg.uri)
        self.stats = SourceStats()
        self._opener = opener
        self._live, self._finite, self._pace = live, finite, pace
        self._stop = threading.Event()
        self._handoff = _Handoff(1 if live else FILE_QUEUE_SIZE, newest_wins=live)
        self._error: SourceError | None = None
        self._index = 0
        self._segment = 0
        self._shape: tuple[int, ...] | None = None
        self._last_put = float("-inf")  # time.monotonic() of the last frame handed over
        self._handed = 0  # frames handed over, ever (reader thread)
        self.live = live
        stream = opener()  # raises: a bad URI fails here, not in the thread
        self.fps = stream.fps
        self.stats.connected = True
        self._thread = threading.Thread(target=self._run, args=(stream,), name=f"source:{self.name}", daemon=True)
        self._thread.start()

    # ---- consumer side -------------------------------------------------------------------------

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame (newest for live sources), or None once the source has ended or closed.

        Waits at most ``timeout`` seconds (default ``cfg.read_timeout_s``), then raises SourceTimeout;
        raises SourceError when the source failed for good (``reconnect=False`` or a file error).
        """
        timeout = self.cfg.read_timeout_s if timeout is None else timeout
        try:
            frame = self._handoff.get(timeout)
        except TimeoutError:
            raise SourceTimeout(f"{self.name}: no frame within {timeout:g} s") from None
        if frame is None and self._error is not None and not self._stop.is_set():
            raise self._error
        return frame

    def __iter__(self) -> Iterator[Frame]:
        """Frames until the source ends, fails or is closed; waits through reconnects."""
        while True:
            try:
                frame = self.read()
            except SourceTimeout:
                if self._thread.is_alive():
                    continue  # still decoding or reconnecting; it logs its own troubles
                frame = self.read(0)
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        """Stop the reader and join it (bounded by the read timeout); idempotent."""
        self._stop.set()
        self._handoff.end(discard=True)
        if self._thread is not threading.current_thread():
            # a blocked PyAV read gives up after at most about twice its timeout
            self._thread.join(2 * max(self.cfg.read_timeout_s, self.cfg.open_timeout_s) + 1.0)
            if self._thread.is_alive():
                log.warning("%s: reader thread still blocked after close()", self.name)

    def __enter__(self) -> ThreadedSource:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ---- reader thread ---------------------------------------------------------------------------

    def _run(self, stream: Stream | None) -> None:
        backoff = Backoff(self.cfg.backoff_initial_s, self.cfg.backoff_max_s)
        try:
            while not self._stop.is_set():
                if stream is None:
                    try:
                        stream = self._opener()
                    except SourceError as exc:
                        if not self._retry(exc, backoff.next()):
                            return
                        continue
                    self.stats.connected = True
                    self._segment += 1
                    self._shape = None
                    if self._live and not self._finite:
                        self.stats.reconnects += 1
                        log.info("%s: reconnected (segment %d)", self.name, self._segment)
                error: SourceError | None = None
                handed = self._handed
                try:
                    self._pump(stream)
                except SourceError as exc:  # a stall (SourceTimeout) too: frames may have come before it
                    error = exc
                finally:
                    stream.close()
                    stream = None
                    self.stats.connected = False
                if self._stop.is_set():
                    return
                delivered = self._handed > handed
                if delivered:  # the connection worked: the next failure starts the backoff afresh
                    backoff.reset()
                if self._finite:
                    if error is not None:  # the consumer reports it (denoise: an error; run: a warning)
                        self.stats.problem = str(error).removeprefix(f"{self.name}: ")
                        log.info("%s; stopping at the last good frame", self._describe(error))
                    if self.cfg.loop and delivered:
                        continue  # reopen from the start as a new segment
                    return
                self.stats.frames_dropped += self._handoff.clear()  # never deliver a pre-drop frame
                if not self._retry(error or SourceError(f"{self.name}: stream ended unexpectedly"), backoff.next()):
                    return
        except Exception as exc:  # a bug or an untranslated error: surface it, don't die silently
            log.exception("%s: reader thread failed", self.name)
            self._error = SourceError(f"{self.name}: reader failed: {exc}")
        finally:
            if stream is not None:
                stream.close()
            self.stats.connected = False
            self._handoff.end()

    def _retry(self, exc: SourceError, delay: float) -> bool:
        """After a failure: wait ``delay`` s and return True to try again, or record the error and stop."""
        what = self._describe(exc)
        if not (self.cfg.reconnect and self._live and not self._finite):
            self._error = exc
            log.warning("%s", what)
            return False
        log.warning("%s; reconnecting in %.1f s", what, delay)
        return not self._stop.wait(delay)

    def _describe(self, exc: SourceError) -> str:
        return str(exc) if str(exc).startswith(self.name) else f"{self.name}: {exc}"

    def _pump(self, stream: Stream) -> None:
        """Move frames from ``stream`` to the hand-off until it ends (``_handed`` counts them)."""
        min_gap = 1.0 / self.cfg.max_fps if self.cfg.max_fps else 0.0
        t0: tuple[float, float] | None = None  # (monotonic, pts) of the first frame, for pacing
        frames = stream.frames(self.stats)
        try:
            for k, (pixels, pts) in enumerate(frames):
                if self._stop.is_set():
                    break
                if self._pace:
                    stream_t = pts if pts is not None else k / (stream.fps or 30.0)
                    if t0 is None:
                        t0 = (time.monotonic(), stream_t)
                    if self._stop.wait(max(0.0, t0[0] + stream_t - t0[1] - time.monotonic())):
                        break
                frame = self._stamp(pixels, pts)
                mono = time.monotonic()
                if self._live and mono - self._last_put < min_gap:
                    self.stats.frames_dropped += 1
                    continue
                self._last_put = mono
                self.stats.frames_dropped += self._handoff.put(frame, self._stop)
                self._handed += 1
        finally:
            frames.close()

    def _stamp(self, pixels: np.ndarray, pts: float | None) -> Frame:
        now = time.time()
        if self._shape is not None and pixels.shape != self._shape:
            self._segment += 1
            old, new = self._shape[:2], pixels.shape[:2]
            log.info("%s: resolution %s -> %s (segment %d)", self.name, old, new, self._segment)
        self._shape = pixels.shape
        frame = Frame(pixels, self._index, pts, now, self.name, self._segment)
        self._index += 1
        self.stats.frames_decoded += 1
        self.stats.last_frame_at = now
        return frame
