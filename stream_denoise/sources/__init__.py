"""Where frames come from: files and RTSP via PyAV, local cameras via OpenCV.

``open_source(cfg)`` picks the kind from ``cfg.uri`` and returns a :class:`Source`: a context manager
and iterable of :class:`~stream_denoise.frame.Frame` (pixels (H, W, 3) uint8 RGB) with ``stats``.
``av`` and ``cv2`` are imported only when a source of their kind is opened.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from ..backoff import Backoff
from ..config import SourceConfig
from ..errors import SourceError, SourceTimeout
from .base import Source, SourceStats, ThreadedSource, ready_frames, redact

__all__ = ["Source", "SourceError", "SourceStats", "SourceTimeout", "ThreadedSource", "is_live", "open_source", "ready_frames"]

ACCEPTED = "rtsp://, rtsps://, an existing video file, or a camera ('0', '/dev/video0')"


def is_rtsp(uri: str) -> bool:
    return bool(re.match(r"^rtsps?://", uri, re.IGNORECASE))


def is_camera(uri: str) -> bool:
    return uri.isdigit() or uri.startswith("/dev/video")


def is_live(uri: str) -> bool:
    """RTSP streams and local cameras are live (reconnect, newest frame wins); files are not."""
    return is_rtsp(uri) or is_camera(uri)


def require_files(sources: Iterable[SourceConfig]) -> None:
    """Raise SourceError naming the first source whose path is not a file (a config error: said at
    start, before any worker process or cluster starts); live and URL sources are checked when opened."""
    for cfg in sources:
        if not is_live(cfg.uri) and "://" not in cfg.uri and not Path(cfg.uri).is_file():
            raise SourceError(f"{cfg.name}: no such file: {cfg.uri!r}" if cfg.name else f"no such file: {cfg.uri!r}")


def open_source(cfg: SourceConfig) -> Source:
    """Open ``cfg.uri`` now (raising SourceError/SourceTimeout within the open timeout) and start reading.

    rtsp(s):// -> live PyAV source; an existing file -> PyAV file source (every frame in order, or
    paced and newest-wins with ``realtime``); a digit or /dev/video* -> OpenCV camera.
    """
    uri = cfg.uri
    if is_rtsp(uri):
        from ..media import PyAVOpener

        return ThreadedSource(cfg, PyAVOpener(cfg, network=True), live=True, finite=False)
    if is_camera(uri):
        from .camera import CameraOpener

        return ThreadedSource(cfg, CameraOpener(cfg), live=True, finite=False)
    if "://" in uri:
        raise SourceError(f"unsupported source {redact(uri)!r}: use {ACCEPTED}")
    if not Path(uri).is_file():
        raise SourceError(f"no such file: {uri!r}: use {ACCEPTED}")
    from ..media import PyAVOpener

    opener = PyAVOpener(cfg, network=False)
    return ThreadedSource(cfg, opener, live=cfg.realtime, finite=True, pace=cfg.realtime)


T = TypeVar("T")
log = logging.getLogger(__name__)


def open_retrying(make: Callable[[], T], cfg: SourceConfig, stop: threading.Event) -> T | None:
    """``make()`` (which opens ``cfg``'s source), retried with capped exponential backoff while it
    raises SourceError and ``cfg.reconnect``; None when ``stop`` is set first."""
    backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
    while not stop.is_set():
        try:
            return make()
        except SourceError as exc:
            if not cfg.reconnect:
                raise
            delay = backoff.next()
            log.warning("%s; retrying in %.1f s", exc, delay)
        if stop.wait(delay):
            break
    return None
