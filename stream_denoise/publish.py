"""Publish cleaned frames over ZeroMQ (receiving them: :mod:`stream_denoise.subscribe`).

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

CURVE (encryption + client allow-list): give the publisher ``PublishConfig.curve`` (its secret
key file and a directory of allowed client public keys, all made by :func:`keygen`); clients
pass ``curve_server_public_key`` and their own ``client_secret_key``. Unknown clients and plain
clients are refused during the handshake and receive nothing.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import cast

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .config import PublishConfig
from .errors import PublishError
from .frame import Frame
from .sockets import LINGER_MS, POLL_MS, endpoint_of, load_keypair, zmq_reason
from .wire import encode, encode_imagezmq, redact

log = logging.getLogger(__name__)


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
            self._where = endpoint_of(self._sock) or self._where
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
            raise PublishError(f"cannot {verb} {cfg.endpoint}: {zmq_reason(exc)}") from None
        except BaseException:
            sock.close(linger=0)
            raise
        log.info("publishing on %s (%s, %s%s%s%s)", endpoint_of(sock), "bind" if cfg.bind else "connect",
                 cfg.encoding, ", CURVE" if cfg.curve else "", ", imagezmq messages" if cfg.wire == "imagezmq" else "",
                 ", lossless" if self.lossless else "")
        return sock

    def _setup_curve(self, sock: zmq.Socket) -> None:
        curve = self.cfg.curve
        assert curve is not None
        if not zmq.has("curve"):
            raise PublishError("this libzmq has no CURVE support")
        public, secret = load_keypair(curve.server_secret_key)
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
                if not monitor.poll(POLL_MS):
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

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound/connected (resolves ``tcp://host:*`` to the chosen port)."""
        return endpoint_of(self._sock) if self._sock is not None else self.cfg.endpoint

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
                raise PublishError(f"send on {self.endpoint} failed: {zmq_reason(exc)}") from None
        self.sent += 1
        return True

    def _drain_subscriptions(self) -> None:
        """An XPUB socket receives (un)subscription messages; read them so they never pile up."""
        assert self._sock is not None
        while cast(int, self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
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


_HANDSHAKE_REASONS: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "its public key is not in {dir}",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "CURVE handshake failed (the wrong server key, or not a CURVE client)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "CURVE handshake failed (not a CURVE client?)",
}
_HANDSHAKE_FAILED = sum(_HANDSHAKE_REASONS)
