"""Receive published frames (:class:`Subscriber`) and record them to a video file (:func:`record`).

The message format is in :mod:`stream_denoise.wire`; the publisher in :mod:`stream_denoise.publish`.

Subscriber::

    with Subscriber("tcp://127.0.0.1:5555", timeout_s=5) as sub:
        for header, image in sub:      # image: (H, W, 3) uint8 BGR; ends after timeout_s idle
            ...
        msg = sub.recv(timeout=1.0)    # Received or None

``latest_only=True`` runs a receive thread that keeps only the newest message, so a consumer
slower than the stream always gets the most recent frame (about 10 ms old) rather than a
backlog of stale ones; what it skipped is counted in ``discarded``.

Subscribers see a publisher's losses as jumps of ``seq`` (``gaps`` / ``missed``). With CURVE, pass
``curve_server_public_key`` and this client's ``client_secret_key`` (both from ``stream-denoise keygen``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any

import cv2
import numpy as np
import zmq

from .errors import ConfigError, MessageError, PublishError, SourceTimeout
from .frame import Frame
from .sockets import POLL_MS, endpoint_of, load_keypair, load_public, zmq_reason
from .wire import DEFAULT_MAX_PIXELS, decode_header, decode_image, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Received:
    """One received frame. Unpacks as ``header, image = received``."""

    topic: bytes
    header: dict[str, Any]
    image: np.ndarray  # (H, W, 3) uint8 BGR
    received_at: float

    def __iter__(self) -> Iterator[Any]:
        return iter((self.header, self.image))

    @property
    def seq(self) -> int:
        return int(self.header["seq"])

    @property
    def index(self) -> int:
        return int(self.header["index"])

    @property
    def source(self) -> str:
        return str(self.header["source"])

    @property
    def latency_s(self) -> float:
        """Capture (decode at the source) to reception, in seconds (wall clocks of two hosts)."""
        return self.received_at - float(self.header["captured_at"])

    def rgb(self) -> np.ndarray:
        return cv2.cvtColor(self.image, cv2.COLOR_BGR2RGB)

    def to_frame(self) -> Frame:
        h = self.header
        return Frame(self.rgb(), h["index"], h["pts"], h["captured_at"], h["source"], h["segment"])


class Subscriber:
    """A SUB socket reading the wire format; see the module docstring.

    Counters: ``received`` (valid messages seen), ``rejected`` (malformed, skipped), ``gaps`` /
    ``missed`` (jumps of ``seq`` and the messages they skipped), ``resets`` (``seq`` went back:
    publisher restarted), ``discarded`` (latest_only: older messages replaced by newer ones),
    ``last_seq``.
    """

    def __init__(
        self,
        endpoint: str,
        topics: Iterable[bytes | str] | bytes | str = (b"",),
        *,
        latest_only: bool = False,
        curve_server_public_key: bytes | str | Path | None = None,
        client_secret_key: str | Path | None = None,
        rcvhwm: int = 8,
        timeout_s: float | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        strict: bool = False,
        bind: bool = False,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.latest_only = latest_only
        self.timeout_s = timeout_s
        self.max_pixels = max_pixels
        self.strict = strict
        self.received = self.rejected = self.gaps = self.missed = self.resets = self.discarded = 0
        self.last_seq: int | None = None
        self._last: dict[bytes, int] = {}
        if isinstance(topics, (bytes, str)):
            topics = (topics,)
        self.topics = [t.encode() if isinstance(t, str) else bytes(t) for t in topics]
        self._ctx = context or zmq.Context.instance()
        sock = self._ctx.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
            sock.setsockopt(zmq.LINGER, 0)
            if curve_server_public_key is not None:
                sock.curve_serverkey = load_public(curve_server_public_key)
                if client_secret_key is not None:
                    sock.curve_publickey, sock.curve_secretkey = load_keypair(client_secret_key)
                else:  # an ephemeral identity: only accepted by servers that allow any client
                    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
            for t in self.topics:
                sock.setsockopt(zmq.SUBSCRIBE, t)
            if bind:
                sock.bind(endpoint)
                self.endpoint = endpoint_of(sock) or endpoint  # tcp://host:* resolved
            else:
                sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise PublishError(f"cannot {'bind' if bind else 'connect to'} {endpoint}: {zmq_reason(exc)}") from None
        except BaseException:
            sock.close(linger=0)
            raise
        self._sock: zmq.Socket | None = sock
        self._closed = threading.Event()
        self._cond = threading.Condition()
        self._slot: tuple[bytes, dict[str, Any], Any, float] | None = None
        self._error: MessageError | None = None
        self._thread: threading.Thread | None = None
        self._warned = 0
        if latest_only:
            self._thread = threading.Thread(target=self._pump, name=f"zmq-sub {endpoint}", daemon=True)
            self._thread.start()

    # -- bookkeeping -----------------------------------------------------------------------
    def _track(self, topic: bytes, seq: int) -> None:
        last = self._last.get(topic)
        if last is not None:
            if seq > last + 1:
                self.gaps += 1
                self.missed += seq - last - 1
            elif seq <= last:
                self.resets += 1
        self._last[topic] = seq
        self.last_seq = seq
        self.received += 1

    def _reject(self, exc: MessageError) -> None:
        """Count a malformed message; raise it when strict, else log (rate-limited) and go on."""
        self.rejected += 1
        if self.strict:
            raise exc
        self._warned += 1
        if self._warned <= 10 or self._warned % 1000 == 0:
            log.warning("%s: rejected message (%d so far): %s", self.endpoint, self.rejected, exc)

    def _header(self, parts: list[Any]) -> tuple[bytes, dict[str, Any]] | None:
        """Validated (topic, header) and tracked seq, or None (rejected)."""
        try:
            topic, header = decode_header(parts, self.max_pixels)
        except MessageError as exc:
            self._reject(exc)
            return None
        self._track(topic, header["seq"])
        return topic, header

    def _finish(self, topic: bytes, header: dict[str, Any], payload: Any, at: float) -> Received | None:
        try:
            image = decode_image(header, payload)
        except MessageError as exc:
            self._reject(exc)
            return None
        return Received(topic, header, image, at)

    # -- latest_only receive thread ----------------------------------------------------------
    def _pump(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._closed.is_set():
            try:
                if not sock.poll(POLL_MS):
                    continue
                while not self._closed.is_set():  # drain what is queued; only the newest survives
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    at = time.time()
                    try:
                        got = self._header(parts)
                    except MessageError as exc:  # strict: the consumer raises it before any newer frame
                        with self._cond:
                            self._error = self._error or exc
                            self._cond.notify()
                        continue
                    if got is not None:
                        with self._cond:
                            if self._slot is not None:
                                self.discarded += 1
                            self._slot = (*got, parts[2], at)
                            self._cond.notify()
            except zmq.Again:
                continue
            except zmq.ZMQError as exc:
                if not self._closed.is_set():
                    log.error("%s: receive thread stopped: %s", self.endpoint, zmq_reason(exc))
                break
        sock.close(linger=0)

    # -- public API --------------------------------------------------------------------------
    def recv(self, timeout: float | None | EllipsisType = ...) -> Received | None:
        """The next frame, or None after ``timeout`` seconds (default: ``timeout_s``; None waits forever).

        Malformed messages are skipped (``rejected`` += 1), or raise MessageError when ``strict``.
        """
        if timeout is ...:
            timeout = self.timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self.latest_only:
                got = self._take(remaining)
            else:
                got = self._recv_direct(remaining)
            if got is not None:
                received = self._finish(*got)
                if received is not None:
                    return received
            elif remaining is not None and remaining <= 0 or self._closed.is_set():
                return None

    def _take(self, remaining: float | None) -> tuple[bytes, dict[str, Any], Any, float] | None:
        with self._cond:
            step = POLL_MS / 1000 if remaining is None else min(remaining, POLL_MS / 1000)
            if self._slot is None and self._error is None and not self._closed.is_set():
                self._cond.wait(step)  # short waits keep Ctrl-C responsive
            error, self._error = self._error, None
            item, self._slot = (None, self._slot) if error else (self._slot, None)
        if error is not None:
            raise error
        return item

    def _recv_direct(self, remaining: float | None) -> tuple[bytes, dict[str, Any], Any, float] | None:
        sock = self._sock
        if sock is None:
            return None
        ms = POLL_MS if remaining is None else min(int(remaining * 1000), POLL_MS)
        if not sock.poll(max(ms, 0)):
            return None
        parts = sock.recv_multipart(copy=False)
        at = time.time()
        got = self._header(parts)
        return None if got is None else (*got, parts[2], at)

    def __iter__(self) -> Iterator[Received]:
        """Frames until ``timeout_s`` passes without one (forever when None) or the subscriber closes."""
        while (msg := self.recv()) is not None:
            yield msg

    def stats(self) -> dict[str, int | None]:
        return {k: getattr(self, k) for k in ("received", "rejected", "gaps", "missed", "resets", "discarded", "last_seq")}

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()  # the thread closes the socket it owns
        elif self._sock is not None:
            self._sock.close(linger=0)
        self._sock = None

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class RecordResult:
    path: Path
    written: int  # frames, over every file of the recording
    width: int  # of the first file
    height: int
    received: int
    rejected: int
    gaps: int
    missed: int
    interrupted: bool  # ended by Ctrl-C / SIGTERM / SIGHUP (the files are finished all the same)
    paths: tuple[Path, ...] = ()  # the files: ``path``, then one more per change of frame size


def record(
    endpoint: str,
    out_path: str | Path,
    count: int | None = None,
    timeout_s: float = 10.0,
    *,
    idle_timeout_s: float | None = None,
    topics: Iterable[bytes | str] | bytes | str = (b"",),
    fps: float | None = None,
    curve_server_public_key: bytes | str | Path | None = None,
    client_secret_key: str | Path | None = None,
    context: zmq.Context | None = None,
) -> RecordResult:
    """Receive frames from ``endpoint`` and write them to ``out_path`` (see :class:`Recording`).

    Waits ``timeout_s`` for the first frame (SourceTimeout without one; no file is created), then
    records through camera outages until ``count`` frames or Ctrl-C/SIGTERM/SIGHUP; with
    ``idle_timeout_s``, also until that long passes without a frame, and then raises SourceTimeout
    once the file is finished. Frames keep the stream's timing (header ``pts`` within a segment,
    capture times across segments and for frames without pts), or are 1/``fps`` apart when ``fps`` is
    given. A change of frame size goes on in a new file. The output must not be an input
    (``ipc://`` socket file, key files): see :func:`stream_denoise.files.check_outputs`.
    """
    from .files import check_outputs, ipc_path
    from .video_writer import Recording, StreamClock

    if count is not None and count < 1:
        raise ConfigError(f"--count {count}: must be at least 1")
    out = Path(out_path)
    keys = [("--server-key", k) for k in (curve_server_public_key,) if isinstance(k, (str, Path)) and Path(k).exists()]
    check_outputs([("endpoint", ipc_path(endpoint)), *keys, ("--client-key", client_secret_key)], [("--out", out)])
    rec = Recording(out, fps or 30.0, color="BGR")
    clock = StreamClock()
    interrupted = idle = False
    with Subscriber(endpoint, topics, curve_server_public_key=curve_server_public_key,
                    client_secret_key=client_secret_key, rcvhwm=16, context=context) as sub:
        try:
            with rec:
                while count is None or rec.frames_written < count:
                    msg = sub.recv(timeout=timeout_s if rec.frames_written == 0 else idle_timeout_s)
                    if msg is None:
                        idle = rec.frames_written > 0
                        break
                    if rec.frames_written == 0:
                        log.info("recording %dx%d from %s to %s", msg.image.shape[1], msg.image.shape[0], endpoint, out)
                    h = msg.header
                    rec.write(msg.image, None if fps else clock(h["pts"], h["captured_at"], h["segment"]))
        except KeyboardInterrupt:
            interrupted = True
        written = rec.frames_written
        first = (0, 0) if not rec.paths else rec.first_size
        if written == 0 and not interrupted:
            raise SourceTimeout(f"no frame received from {endpoint} within {timeout_s:g} s")
        if idle:
            raise SourceTimeout(f"no frame from {endpoint} for {idle_timeout_s:g} s (--idle-timeout): stopped; "
                                f"wrote {written} frames to {', '.join(map(str, rec.paths))}")
        return RecordResult(out, written, first[0], first[1], sub.received, sub.rejected, sub.gaps, sub.missed,
                            interrupted, tuple(rec.paths))
