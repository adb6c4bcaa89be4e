"""The cleaned stream over RTSP, for the tools people already watch video with (``run --rtsp-out``).

::

    publish stage ──send(frame)──▶ [queue, queue_size; full: oldest dropped] ──▶ encoder thread
        encoder thread: Timeline (source pts -> 1/90000 s) ─▶ link.send(frame, pts)
            serve: PyAV encoder ─▶ helper process (gst-rtsp-server) ─▶ any number of RTSP clients
            push:  PyAV encoder + FFmpeg's RTSP muxer ─▶ ANNOUNCE/RECORD to the user's media server

``send`` never blocks: the denoiser and the ZeroMQ publisher never wait on the network. A frame
leaves as ``sent``, or is ``dropped`` (queue full because the encoder or the network is slower, push
target down, server pipe full) and counted, or is ``idle`` (serve mode, nobody watching: not encoded).
Both modes reconnect (push) or restart the server (serve) with capped backoff, counted in
``reconnects``. The encoder and its settings are in :mod:`.encoder`, the modes in :mod:`.serve` and
:mod:`.push`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from ..config import RtspOutConfig, rtsp_path_for
from ..frame import Frame
from ..metrics import Window

if TYPE_CHECKING:
    from .encoder import Encoder

log = logging.getLogger(__name__)

FpsOf = Callable[[], "float | None"]


class Link(Protocol):
    """One mode's way to the network; ``send`` and ``close`` are called by the encoder thread only."""

    mode: str  # "serve" or "push"

    @property
    def url(self) -> str: ...  # credentials removed

    @property
    def reconnects(self) -> int: ...

    @property
    def clients(self) -> int: ...  # serve: clients playing the path; push: 0

    @property
    def connected(self) -> bool: ...

    def send(self, frame: Frame, pts: int, fps: float) -> tuple[str, Encoder | None, int]: ...
    def close(self) -> None: ...


class RtspOutput:
    """Frames in (:meth:`send`, never blocks), an RTSP stream out; see the module docstring.

    Counters (read from any thread): ``sent``, ``dropped``, ``idle``, ``bytes``; ``encode_ms`` is a
    window of per-frame encode times. ``error`` is set if the encoder thread failed (a bug): frames
    are then counted as dropped.
    """

    def __init__(self, cfg: RtspOutConfig, link: Link, name: str, fps_of: FpsOf | None = None) -> None:
        self.cfg, self.link, self.name = cfg, link, name
        self._fps_of = fps_of or (lambda: None)
        self.sent = self.idle = self.bytes = 0  # written by the encoder thread only
        self._dropped_queue = 0  # by send() (under the lock)
        self._dropped_link = 0  # by the encoder thread
        self.encode_ms = Window(500)
        self.error: BaseException | None = None
        self._items: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"rtsp-out:{name}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return self.link.url

    @property
    def dropped(self) -> int:
        """Frames that never went out: queue full, peer down or congested, or after a failure."""
        return self._dropped_queue + self._dropped_link

    def send(self, frame: Frame) -> None:
        """Queue ``frame`` for encoding; when the queue is full the oldest waiting frame is dropped."""
        with self._cond:
            if self._closing:
                return
            if self.error is not None:
                self._dropped_queue += 1
                return
            if len(self._items) >= self.cfg.queue_size:
                self._items.popleft()
                self._dropped_queue += 1
            self._items.append(frame)
            self._cond.notify()

    def _run(self) -> None:
        from .encoder import DEFAULT_FPS, Timeline

        timeline: Timeline | None = None
        fps = DEFAULT_FPS
        try:
            while True:
                with self._cond:
                    while not self._items and not self._closing:
                        self._cond.wait(0.5)
                    if not self._items:
                        return  # closing, everything sent
                    frame = self._items.popleft()
                if timeline is None:
                    fps = self.cfg.fps or self._fps_of() or DEFAULT_FPS
                    timeline = Timeline(fps)
                outcome, enc, n = self.link.send(frame, timeline.map(frame), fps)
                if outcome == "sent":
                    self.sent += 1
                    self.bytes += n
                    self.encode_ms.add((enc.encode_ms if enc is not None else 0.0) / 1000)
                elif outcome == "dropped":
                    self._dropped_link += 1
                else:
                    self.idle += 1
        except Exception as exc:  # a bug: say so once, keep counting what is lost
            log.exception("rtsp-out %s: the encoder thread failed", self.name)
            with self._cond:
                self.error = exc
                self._dropped_queue += len(self._items)
                self._items.clear()

    def status(self) -> str:
        """The part of the status line: clients (serve) or up/down (push), frames sent and dropped, reconnects."""
        link = self.link
        state = f"clients {link.clients}" if link.mode == "serve" else ("up" if link.connected else "down")
        failed = " FAILED" if self.error is not None else ""
        return f"rtsp {state}{failed} sent {self.sent} dropped {self.dropped} reconnects {link.reconnects}"

    def snapshot(self) -> dict[str, float | int]:
        return {"rtsp_sent": self.sent, "rtsp_dropped": self.dropped, "rtsp_idle": self.idle, "rtsp_bytes": self.bytes,
                "rtsp_reconnects": self.link.reconnects, "rtsp_clients": self.link.clients,
                "rtsp_connected": int(self.link.connected and self.error is None),
                "rtsp_encode_p50_ms": 1000 * self.encode_ms.percentile(50),
                "rtsp_encode_p99_ms": 1000 * self.encode_ms.percentile(99)}

    def close(self) -> None:
        """Encode and send what is queued (at most ``queue_size`` frames), stop the thread, close the link."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=self.cfg.open_timeout_s + self.cfg.io_timeout_s + 5)
        if self._thread.is_alive():
            log.warning("rtsp-out %s: the encoder thread did not stop; leaving its connection open", self.name)
            return
        self.link.close()


def open_outputs(requests: Sequence[tuple[RtspOutConfig, str, FpsOf | None]]) -> list[RtspOutput]:
    """One :class:`RtspOutput` per ``(config, camera name, fps_of)``. Serve-mode cameras on the same
    host:port share one server (their paths: ``path`` or the camera's name). Raises PublishError
    (one line) when an encoder or a server cannot start; what was opened is closed again."""
    from .encoder import choose_encoder
    from .push import PushLink
    from .serve import GstServer, ServeLink

    outputs: list[RtspOutput] = []
    servers: dict[tuple[str, int], GstServer] = {}
    try:
        encoders = [choose_encoder(cfg) for cfg, _, _ in requests]  # fail fast on a bad encoder or preset
        groups: dict[tuple[str, int], list[int]] = {}
        for i, (cfg, _, _) in enumerate(requests):
            if not cfg.push:
                groups.setdefault((cfg.host, cfg.port) if cfg.port else (cfg.host, -i), []).append(i)
        for key, members in groups.items():
            paths = [requests[i][0].path or rtsp_path_for(requests[i][1]) for i in members]
            servers[key] = GstServer(requests[members[0]][0], paths)
        for i, (cfg, name, fps_of) in enumerate(requests):
            link: Link
            if cfg.push:
                link = PushLink(cfg, encoders[i])
            else:
                key = next(k for k, members in groups.items() if i in members)
                link = ServeLink(servers[key], groups[key].index(i), cfg, encoders[i])
            outputs.append(RtspOutput(cfg, link, name, fps_of))
    except BaseException:
        for out in outputs:
            out.close()
        for server in servers.values():
            server.close()
        raise
    return outputs  # each server is held by its links; the last one to close stops it


__all__ = ["RtspOutput", "open_outputs"]
