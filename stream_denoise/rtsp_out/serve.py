"""Serve mode: an RTSP server that NVRs, VLC and restreamers pull ``rtsp://HOST:PORT/PATH`` from.

The server is GStreamer's gst-rtsp-server, run in a helper process (``gst_server.py``) that this
process starts, feeds and restarts; it is not a separate service the user runs. Why a process and
not PyGObject in this interpreter: GStreamer's Python bindings come from the system (Debian's
``python3-gi``), bound to the system's Python; PyPI's PyGObject must be compiled against the system's
GObject introspection (``libgirepository1.0-dev``, a C compiler) and its current releases need
girepository-2.0, which Debian 12 lacks (``PyGObject<3.51`` builds there). A helper run by the system
Python needs nothing compiled, and a crash inside GStreamer cannot take the denoiser down: the helper
is restarted with backoff (counted in ``reconnects``) and clients reconnect.

Encoding stays here (PyAV, :mod:`.encoder`, the same encoder as push mode); the helper only
parses, packetises (RTP) and serves. Records go down the helper's stdin (non-blocking: a full pipe
drops the next frames *before* they are encoded, so the stream stays decodable, and a helper that
reads nothing for ``io_timeout_s`` is restarted); events come back on its stdout (see
``gst_server.py``). Nothing is encoded for a path nobody watches: the helper says when a client
asks for one (``WANT``), and each new client gets a keyframe at once (``KEY``).
"""

from __future__ import annotations

import functools
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av

from ..backoff import Backoff
from ..config import RtspOutConfig
from ..errors import PublishError
from ..frame import Frame
from .encoder import CLOCK_HZ, TIME_BASE, Encoder, coded_size, configure
from .gst_server import FLAG_KEY, HEADER, KIND_PACKET, MAGIC  # constants only: that module imports gi lazily

log = logging.getLogger(__name__)

HELPER = Path(__file__).with_name("gst_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"
INSTALL_HINT = ("apt install python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad, "
                "or push to a media server you run: --rtsp-out rtsp://HOST:8554/PATH")
_PROBE = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
          "from gi.repository import Gst, GstRtspServer")
_PIPE_BYTES = 1 << 20  # the helper's stdin pipe: about a second of 8 Mbit/s video
_F_SETPIPE_SZ = 1031
_POLL_S = 0.5
_CLOSE_S = 5.0


@functools.cache
def _has_gst_rtsp(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", _PROBE], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_gst_python(configured: str | None) -> str:
    """The Python to run the server with: ``configured``, else this one if it has GStreamer's gi
    bindings, else the system's; PublishError saying what to install when none has them."""
    candidates = [configured] if configured else [sys.executable, SYSTEM_PYTHON]
    for python in candidates:
        if _has_gst_rtsp(python):
            return python
    which = configured or f"neither {sys.executable} nor {SYSTEM_PYTHON}"
    raise PublishError(f"rtsp-out: serving RTSP needs GStreamer's RTSP server for Python ({which} has it): {INSTALL_HINT}")


@dataclass
class Mount:
    """One path of the server, as the helper last reported it."""

    path: str
    want: bool = False  # a media is running: clients watch (or are about to)
    key: bool = False  # a keyframe is wanted (a client joined)
    clients: int = 0
    epoch: int = 0  # +1 per new media: its encoder starts afresh, with a keyframe


class _Lines:
    """Lines from a subprocess's stdout and stderr, read with a timeout (select on the raw fds)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self._fds = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
        self._buf = {fd: b"" for fd in self._fds}

    def read(self, timeout: float) -> list[tuple[str, str]] | None:
        """Complete lines as ``(stream, text)``; [] after ``timeout``; None once both streams ended."""
        if not self._fds:
            return None
        ready, _, _ = select.select(list(self._fds), [], [], timeout)
        lines: list[tuple[str, str]] = []
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                name = self._fds.pop(fd)
                if self._buf[fd]:
                    lines.append((name, self._buf[fd].decode(errors="replace")))
                continue
            *done, self._buf[fd] = (self._buf[fd] + chunk).split(b"\n")
            lines += [(self._fds[fd], d.decode(errors="replace").rstrip()) for d in done]
        return lines


class GstServer:
    """The helper process serving ``paths`` on ``cfg.host:cfg.port``; shared by the cameras on that
    address (``acquire``/``release``), started at construction (PublishError if it cannot listen),
    restarted with capped backoff when it dies or stalls. Thread-safe."""

    def __init__(self, cfg: RtspOutConfig, paths: Sequence[str]) -> None:
        self.cfg = cfg
        self.python = find_gst_python(cfg.gst_python)
        self.mounts = [Mount(p) for p in paths]
        self.port = cfg.port
        self.restarts = 0
        self._users = 0
        self._lock = threading.Lock()  # the process, its pipe and the pending bytes
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: _Lines | None = None
        self._pending = bytearray()
        self._pending_since = 0.0
        self._closed = threading.Event()
        self._start()
        log.info("rtsp-out: serving %s", ", ".join(self.url(i) for i in range(len(self.mounts))))
        self._thread = threading.Thread(target=self._supervise, name=f"rtsp-server:{self.port}", daemon=True)
        self._thread.start()

    def url(self, mount: int) -> str:
        auth = f"{self.cfg.username}:***@" if self.cfg.username else ""
        return f"rtsp://{auth}{self.cfg.host}:{self.port}/{self.mounts[mount].path}"

    @property
    def running(self) -> bool:
        return self._proc is not None

    # -- the process ---------------------------------------------------------------------------------
    def _start(self) -> None:
        cfg = self.cfg
        env = dict(os.environ)
        if cfg.username is not None:
            env["STREAM_DENOISE_RTSP_USER"], env["STREAM_DENOISE_RTSP_PASSWORD"] = cfg.username, cfg.password or ""
        cmd = [self.python, str(HELPER), "--host", cfg.host, "--port", str(self.port), "--codec", cfg.codec]
        for m in self.mounts:
            cmd += ["--mount", m.path]
        try:  # own session: a Ctrl-C in the terminal reaches us, and we stop the helper in order
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=env, start_new_session=True)
        except OSError as exc:
            raise PublishError(f"rtsp-out: cannot start the RTSP server with {self.python}: {exc.strerror}") from None
        lines = _Lines(proc)
        deadline = time.monotonic() + cfg.open_timeout_s + 5  # + the helper's own start (gi, GStreamer)
        last_err = ""
        while time.monotonic() < deadline:
            got = lines.read(max(0.0, deadline - time.monotonic()))
            if got is None:
                break
            for stream, text in got:
                if stream == "err":
                    last_err = text or last_err
                    log.warning("rtsp server: %s", text)
                elif text.startswith("READY"):
                    self._ready(proc, lines, int(text.split()[1]))
                    return
                elif text.startswith("ERROR"):
                    _stop(proc)
                    raise PublishError(f"rtsp-out: {text[6:]}")
        _stop(proc)
        why = f": {last_err}" if last_err else f" within {cfg.open_timeout_s + 5:g} s"
        raise PublishError(f"rtsp-out: the RTSP server did not start{why}")

    def _ready(self, proc: subprocess.Popen[bytes], lines: _Lines, port: int) -> None:
        assert proc.stdin is not None
        fd = proc.stdin.fileno()
        os.set_blocking(fd, False)
        try:
            import fcntl

            fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            pass  # the default pipe (64 KiB) works; it just fills sooner
        with self._lock:
            self._proc, self._lines, self.port = proc, lines, port  # restarts keep the port of port = 0
            self._pending.clear()
            for m in self.mounts:
                m.want, m.clients = False, 0

    def _supervise(self) -> None:
        """Read the helper's events; restart it with backoff when it ends or stalls."""
        backoff = Backoff(self.cfg.backoff_initial_s, self.cfg.backoff_max_s)
        while not self._closed.is_set():
            proc, lines = self._proc, self._lines
            if proc is None or lines is None:
                if self._closed.wait(backoff.delay):
                    return
                try:
                    self._start()
                except PublishError as exc:
                    backoff.next()
                    log.warning("%s; retrying in %.1f s", exc, backoff.delay)
                    continue
                self.restarts += 1
                backoff.reset()
                log.info("rtsp-out: RTSP server restarted (%d so far)", self.restarts)
                continue
            got = lines.read(_POLL_S)
            if got is None:  # the helper ended
                code = proc.wait()
                with self._lock:
                    self._proc = self._lines = None
                    for m in self.mounts:
                        m.want, m.clients = False, 0
                if not self._closed.is_set():
                    log.warning("rtsp-out: the RTSP server exited (code %s); restarting", code)
                continue
            for stream, text in got:
                self._event(stream, text)
            with self._lock:
                stalled = self._pending and time.monotonic() - self._pending_since > self.cfg.io_timeout_s
            if stalled and not self._closed.is_set():
                log.warning("rtsp-out: the RTSP server read nothing for %g s; restarting it", self.cfg.io_timeout_s)
                proc.kill()

    def _event(self, stream: str, text: str) -> None:
        if stream == "err":
            log.warning("rtsp server: %s", text)
            return
        parts = text.split()
        try:
            kind, mount = parts[0], self.mounts[int(parts[1])] if len(parts) > 1 else None
        except (IndexError, ValueError):
            log.warning("rtsp server: %s", text)
            return
        if kind == "WANT" and mount is not None:
            mount.want = parts[2] == "1"
            if mount.want:
                mount.epoch += 1
                mount.key = True
            log.debug("rtsp-out: /%s %s", mount.path, "watched" if mount.want else "idle")
        elif kind == "KEY" and mount is not None:
            mount.key = True
        elif kind == "CLIENTS" and mount is not None:
            mount.clients = int(parts[2])
            log.info("rtsp-out: /%s has %d client(s)", mount.path, mount.clients)
        else:
            log.warning("rtsp server: %s", text)

    # -- the pipe ------------------------------------------------------------------------------------
    def writable(self) -> bool:
        """Whether the helper has taken everything so far (so the next frame may be encoded)."""
        with self._lock:
            if self._proc is None:
                return False
            self._flush()
            return not self._pending

    def write(self, mount: int, packets: list[av.Packet]) -> int:
        """Queue ``packets`` of ``mount`` for the helper (never blocks); the bytes queued."""
        n = 0
        with self._lock:
            if self._proc is None:
                return 0
            if not self._pending:
                self._pending_since = time.monotonic()
            for pkt in packets:
                data = bytes(pkt)
                pts_ns = int(pkt.pts) * 1_000_000_000 // CLOCK_HZ if pkt.pts is not None else 0
                flags = FLAG_KEY if pkt.is_keyframe else 0
                self._pending += HEADER.pack(MAGIC, KIND_PACKET, flags, mount, len(data), pts_ns)
                self._pending += data
                n += len(data)
            self._flush()
        return n

    def _flush(self) -> None:
        """(Under the lock.) Write what the pipe takes now."""
        assert self._proc is not None and self._proc.stdin is not None
        while self._pending:
            try:
                n = os.write(self._proc.stdin.fileno(), self._pending)
            except BlockingIOError:
                return
            except OSError:  # the helper is gone; the supervisor restarts it
                self._pending.clear()
                return
            del self._pending[:n]
            self._pending_since = time.monotonic()

    # -- sharing and closing -------------------------------------------------------------------------
    def acquire(self) -> GstServer:
        with self._lock:
            self._users += 1
        return self

    def release(self) -> None:
        """Close when the last camera using the server lets it go."""
        with self._lock:
            self._users -= 1
            last = self._users <= 0
        if last:
            self.close()

    def close(self) -> None:
        """Stop the helper (end of input: it ends the streams and exits) and the supervisor; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            _stop(proc)
        if hasattr(self, "_thread"):
            self._thread.join(timeout=_CLOSE_S + 1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Close the helper's stdin (it ends its streams and exits), kill it if it does not, reap it."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=_CLOSE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=_CLOSE_S)
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


class ServeLink:
    """One camera's path on a :class:`GstServer`: encodes (standalone encoder) only while watched."""

    mode = "serve"

    def __init__(self, server: GstServer, mount: int, cfg: RtspOutConfig, encoder: str) -> None:
        self.server, self.mount, self.cfg, self.encoder_name = server.acquire(), mount, cfg, encoder
        self._encoder: Encoder | None = None
        self._epoch = -1

    @property
    def url(self) -> str:
        return self.server.url(self.mount)

    @property
    def connected(self) -> bool:
        return self.server.running

    @property
    def clients(self) -> int:
        return self.server.mounts[self.mount].clients

    @property
    def reconnects(self) -> int:
        return self.server.restarts

    def send(self, frame: Frame, pts: int, fps: float) -> tuple[str, Encoder | None, int]:
        """("sent" | "dropped" | "idle", the encoder used, bytes queued)."""
        m = self.server.mounts[self.mount]
        if not (m.want and self.server.running):
            self._encoder = None  # nobody watches: nothing to encode
            return "idle", None, 0
        enc, (w, h) = self._encoder, coded_size(frame)
        if enc is None or self._epoch != m.epoch or (enc.width, enc.height) != (w, h):
            ctx = av.CodecContext.create(self.encoder_name, "w")
            configure(ctx, self.cfg, self.encoder_name, w, h, fps)
            enc = self._encoder = Encoder(ctx, w, h)
            self._epoch = m.epoch
        if not self.server.writable():
            return "dropped", None, 0  # before encoding: the stream stays decodable
        key, m.key = m.key, False
        packets = enc.encode(frame, pts, key)
        return "sent", enc, self.server.write(self.mount, packets)

    def close(self) -> None:
        self._encoder = None
        self.server.release()


__all__ = ["GstServer", "ServeLink", "TIME_BASE", "find_gst_python"]
