"""Publish cleaned frames over ZeroMQ, and receive them.

The message format is in :mod:`stream_denoise.wire`. In short, each frame is a 3-part message
``[topic, JSON header, BGR24 pixels | jpeg | png]``.

Publisher (one PUB socket, never blocks the pipeline)::

    with Publisher(PublishConfig(endpoint="tcp://127.0.0.1:5555")) as pub:
        pub.send(frame)            # False (and ``dropped`` += 1) if it could not be queued

A PUB socket drops messages silently, per subscriber, once that subscriber's queue (``sndhwm``)
is full: a slow subscriber never slows the publisher or the other subscribers. Subscribers see
those losses as jumps of ``seq`` (``Subscriber.gaps`` / ``missed``). A *lossless* publisher (files:
``Publisher(cfg, lossless=True)``) is an XPUB socket with ``XPUB_NODROP``: a message goes to every
subscriber or to none, ``send(frame, wait_s=...)`` waits up to ``wait_s`` for the slowest one to
make room, and a message that still cannot go is counted in ``dropped`` — no loss goes uncounted.

Subscriber::

    with Subscriber("tcp://127.0.0.1:5555", timeout_s=5) as sub:
        for header, image in sub:      # image: (H, W, 3) uint8 BGR; ends after timeout_s idle
            ...
        msg = sub.recv(timeout=1.0)    # Received or None

``latest_only=True`` runs a receive thread that keeps only the newest message, so a consumer
slower than the stream always gets the most recent frame (about 10 ms old) rather than a
backlog of stale ones; what it skipped is counted in ``discarded``.

CURVE (encryption + client allow-list): give the publisher ``PublishConfig.curve`` (its secret
key file and a directory of allowed client public keys, all made by :func:`keygen`); clients
pass ``curve_server_public_key`` and their own ``client_secret_key``. Unknown clients and plain
clients are refused during the handshake and receive nothing.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
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
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .config import PublishConfig
from .errors import MessageError, PublishError, SourceTimeout
from .frame import Frame
from .wire import DEFAULT_MAX_PIXELS, decode_header, decode_image, encode, encode_imagezmq, redact

log = logging.getLogger(__name__)

LINGER_MS = 100
_POLL_MS = 100


def _zmq_reason(exc: zmq.ZMQError) -> str:
    return exc.strerror or str(exc)


class Publisher:
    """A PUB socket that sends :class:`Frame` s in the wire format; see the module docstring.

    Use it from one thread. ``sent`` counts messages the socket accepted, ``dropped`` those it
    refused; per-subscriber drops at the high-water mark are silent here (except when ``lossless``)
    and show up as ``seq`` gaps at that subscriber.
    """

    def __init__(self, cfg: PublishConfig | None = None, context: zmq.Context | None = None, *,
                 lossless: bool = False) -> None:
        self.cfg = cfg or PublishConfig()
        self.lossless = lossless
        self.sent = 0
        self.dropped = 0
        self.refused = 0  # CURVE: subscribers refused at the handshake
        self._seq: dict[bytes, int] = {}
        self._auth: ThreadAuthenticator | None = None
        self._monitor: threading.Thread | None = None
        self._closing = threading.Event()
        # An authenticator owns its context's ZAP endpoint: CURVE publishers get a private context.
        self._own_context = context is None and self.cfg.curve is not None
        self._ctx = zmq.Context() if self._own_context else (context or zmq.Context.instance())
        self._sock: zmq.Socket | None = None
        self._where = self.cfg.endpoint  # the bound endpoint once known, for the monitor thread's messages
        try:
            self._sock = self._open()
            self._where = self.endpoint_of(self._sock) or self._where
        except BaseException:
            self.close()
            raise

    def _open(self) -> zmq.Socket:
        cfg = self.cfg
        sock = self._ctx.socket(zmq.XPUB if self.lossless else zmq.PUB)
        try:
            sock.setsockopt(zmq.SNDHWM, cfg.sndhwm)
            sock.setsockopt(zmq.LINGER, LINGER_MS)
            if self.lossless:
                sock.setsockopt(zmq.XPUB_NODROP, 1)  # a full subscriber makes send fail (counted), not drop silently
            if cfg.curve is not None:
                self._setup_curve(sock)
            if cfg.bind:
                sock.bind(cfg.endpoint)
            else:
                sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only for completed connections
                sock.connect(cfg.endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            verb = "bind" if cfg.bind else "connect to"
            raise PublishError(f"cannot {verb} {cfg.endpoint}: {_zmq_reason(exc)}") from None
        except BaseException:
            sock.close(linger=0)
            raise
        log.info("publishing on %s (%s, %s%s%s%s)", self.endpoint_of(sock), "bind" if cfg.bind else "connect",
                 cfg.encoding, ", CURVE" if cfg.curve else "", ", imagezmq messages" if cfg.wire == "imagezmq" else "",
                 ", lossless" if self.lossless else "")
        return sock

    def _setup_curve(self, sock: zmq.Socket) -> None:
        curve = self.cfg.curve
        assert curve is not None
        if not zmq.has("curve"):
            raise PublishError("this libzmq has no CURVE support")
        public, secret = _load_keypair(curve.server_secret_key)
        allowed = Path(curve.allowed_clients_dir)
        if not allowed.is_dir():
            raise PublishError(f"allowed clients directory not found: {allowed}")
        n_keys = len(zmq.auth.load_certificates(allowed))
        if n_keys == 0:
            log.warning("no client public keys (*.key) in %s: no subscriber can connect", allowed)
        self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger(__name__ + ".auth"))
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(allowed))
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
        self._monitor = threading.Thread(target=self._watch_handshakes, args=(monitor, allowed),
                                         name="curve-monitor", daemon=True)
        self._monitor.start()
        log.info("CURVE on, %d allowed client key(s) from %s", n_keys, allowed)

    def _watch_handshakes(self, monitor: zmq.Socket, allowed: Path) -> None:
        """Log every subscriber the CURVE handshake refused (rate-limited), on the monitor's own thread."""
        from zmq.utils.monitor import recv_monitor_message

        logged: dict[int, float] = {}  # event -> when it was last logged: a client retrying every 0.1 s logs every 10 s
        try:
            while not self._closing.is_set():
                if not monitor.poll(_POLL_MS):
                    continue
                event = recv_monitor_message(monitor)["event"]
                if event not in _HANDSHAKE_REASONS:
                    continue
                self.refused += 1
                now = time.monotonic()
                if now - logged.get(event, -math.inf) >= 10:
                    logged[event] = now
                    why = _HANDSHAKE_REASONS[event].format(dir=allowed)
                    log.warning("refused a subscriber on %s (%d refused so far): %s", self._where, self.refused, why)
        except zmq.ZMQError:
            pass
        finally:
            monitor.close(linger=0)

    @staticmethod
    def endpoint_of(sock: zmq.Socket) -> str:
        ep = sock.getsockopt(zmq.LAST_ENDPOINT)
        return ep.decode() if isinstance(ep, bytes) and ep else ""

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound/connected (resolves ``tcp://host:*`` to the chosen port)."""
        return self.endpoint_of(self._sock) if self._sock is not None else self.cfg.endpoint

    def reload_clients(self) -> None:
        """Re-read ``allowed_clients_dir`` after adding or removing client keys."""
        if self._auth is not None and self.cfg.curve is not None:
            self._auth.configure_curve(domain="*", location=str(self.cfg.curve.allowed_clients_dir))

    def send(self, frame: Frame, topic: str | bytes | None = None, *, wait_s: float = 0.0,
             stop: threading.Event | None = None) -> bool:
        """Queue one frame; False (and ``dropped`` += 1) when it could not be queued.

        Lossless publishers wait up to ``wait_s`` seconds (``math.inf``: until ``stop`` is set) for
        every subscriber to have room; others never wait.
        """
        if self._sock is None:
            raise PublishError("publisher is closed")
        t = topic if topic is not None else (self.cfg.topic if self.cfg.topic is not None else redact(frame.source))
        tb = t.encode() if isinstance(t, str) else bytes(t)
        seq = self._seq.get(tb, 0)
        self._seq[tb] = seq + 1  # a message that is not sent is a gap subscribers can see
        if self.cfg.wire == "imagezmq":
            parts = encode_imagezmq(frame, seq, self.cfg.encoding, self.cfg.jpeg_quality, topic=tb)  # type: ignore[arg-type]
        else:
            parts = encode(frame, seq, self.cfg.encoding, self.cfg.jpeg_quality, topic=tb)
        if self.lossless:
            self._drain_subscriptions()
        deadline = time.monotonic() + wait_s
        pause, warned = 0.0005, time.monotonic()
        while True:
            try:
                self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                break
            except zmq.Again:
                now = time.monotonic()
                if not self.lossless or now >= deadline or (stop is not None and stop.is_set()):
                    self.dropped += 1
                    return False
                if now - warned > 5:
                    warned = now
                    log.warning("%s: waiting for a subscriber that is not reading (frames of a file are "
                                "published losslessly)", self.endpoint)
                time.sleep(min(pause, max(deadline - now, 0.0)))
                pause = min(2 * pause, 0.01)
                self._drain_subscriptions()
            except zmq.ZMQError as exc:
                raise PublishError(f"send on {self.endpoint} failed: {_zmq_reason(exc)}") from None
        self.sent += 1
        return True

    def _drain_subscriptions(self) -> None:
        """An XPUB socket receives (un)subscription messages; read them so they never pile up."""
        assert self._sock is not None
        while self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._sock.recv(zmq.NOBLOCK)

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped}

    def close(self) -> None:
        """Close the socket, stop the authenticator (idempotent)."""
        self._closing.set()
        if self._sock is not None:
            if self._monitor is not None:
                self._sock.disable_monitor()
            self._sock.close(linger=LINGER_MS)
            self._sock = None
        if self._monitor is not None:
            self._monitor.join(timeout=5)
            self._monitor = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context:
            self._ctx.term()
            self._own_context = False

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


_HANDSHAKE_REASONS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "its public key is not in {dir}",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "CURVE handshake failed (the wrong server key, or not a CURVE client)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "CURVE handshake failed (not a CURVE client?)",
}
_HANDSHAKE_FAILED = sum(_HANDSHAKE_REASONS)


def _load_keypair(path: str | Path) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise PublishError(f"cannot read key file {path}: {exc}") from None
    if not secret:
        raise PublishError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def _load_public(key: bytes | str | Path) -> bytes:
    """A Z85 public key given as 40 characters or as a key file path."""
    if isinstance(key, (bytes, str)) and len(key) == 40 and not Path(os.fsdecode(key)).exists():
        return key.encode() if isinstance(key, str) else key
    try:
        public, _ = zmq.auth.load_certificate(os.fsdecode(key))
    except (OSError, ValueError) as exc:
        raise PublishError(f"cannot read public key {os.fsdecode(key)}: {exc}") from None
    return public


def keygen(directory: str | Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Create ``DIR/NAME.key`` (public, share it) and ``DIR/NAME.key_secret`` (mode 0600)."""
    d = Path(directory)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    if not overwrite and (public.exists() or secret.exists()):
        raise PublishError(f"{public} or {secret} already exists (refusing to overwrite a key)")
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=d, prefix=f".{name}.") as tmp:  # renamed into place once whole
            pub_path, sec_path = zmq.auth.create_certificates(tmp, name)
            os.chmod(sec_path, 0o600)
            os.replace(sec_path, secret)
            os.replace(pub_path, public)
    except OSError as exc:
        raise PublishError(f"cannot write keys in {d}: {exc}") from None
    return public, secret


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
                sock.curve_serverkey = _load_public(curve_server_public_key)
                if client_secret_key is not None:
                    sock.curve_publickey, sock.curve_secretkey = _load_keypair(client_secret_key)
                else:  # an ephemeral identity: only accepted by servers that allow any client
                    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
            for t in self.topics:
                sock.setsockopt(zmq.SUBSCRIBE, t)
            if bind:
                sock.bind(endpoint)
                self.endpoint = Publisher.endpoint_of(sock) or endpoint  # tcp://host:* resolved
            else:
                sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise PublishError(f"cannot {'bind' if bind else 'connect to'} {endpoint}: {_zmq_reason(exc)}") from None
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
                if not sock.poll(_POLL_MS):
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
                    log.error("%s: receive thread stopped: %s", self.endpoint, _zmq_reason(exc))
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
            step = _POLL_MS / 1000 if remaining is None else min(remaining, _POLL_MS / 1000)
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
        ms = _POLL_MS if remaining is None else min(int(remaining * 1000), _POLL_MS)
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
        raise ValueError("count must be >= 1")
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
