"""Push mode: publish the stream to a media server the user runs (MediaMTX, go2rtc, Frigate's go2rtc)
with RTSP ANNOUNCE/RECORD, through FFmpeg's RTSP muxer (PyAV), interleaved over TCP.

Each connection has its own encoder (the muxer's stream: its SPS/PPS go into the SDP of the
ANNOUNCE), so every connection starts with a keyframe. A refused or failed connection, or a write
that fails or takes longer than ``io_timeout_s`` (FFmpeg's socket timeout), closes it; the next
attempt waits a capped exponential backoff, and frames meanwhile are dropped (counted) without
being encoded. A frame size change reconnects (a new SDP).
"""

from __future__ import annotations

import logging
import time
from fractions import Fraction

import av

from ..backoff import Backoff
from ..config import RtspOutConfig
from ..frame import Frame
from ..sources.base import redact
from .encoder import Encoder, coded_size, configure

log = logging.getLogger(__name__)


class PushLink:
    mode = "push"

    def __init__(self, cfg: RtspOutConfig, encoder: str) -> None:
        assert cfg.url is not None
        self.cfg, self.encoder_name = cfg, encoder
        self.url = redact(cfg.url)
        self.reconnects = 0  # successful connections after a loss
        self.failures = 0  # connection attempts that failed, and connections lost
        self.clients = 0
        self._out: av.container.OutputContainer | None = None
        self._encoder: Encoder | None = None
        self._ever = False
        self._backoff_delay = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
        self._next_try = 0.0

    @property
    def connected(self) -> bool:
        return self._out is not None

    def send(self, frame: Frame, pts: int, fps: float) -> tuple[str, Encoder | None, int]:
        """("sent" | "dropped", the encoder used, bytes written)."""
        enc, size = self._encoder, coded_size(frame)
        if enc is not None and (enc.width, enc.height) != size:
            log.info("rtsp-out: frame size now %dx%d: reconnecting to %s", *size, self.url)
            self._disconnect()
            self._next_try = 0.0
        if self._out is None and not self._connect(frame, fps):
            return "dropped", None, 0
        assert self._out is not None and self._encoder is not None
        try:
            packets = self._encoder.encode(frame, pts)
            self._out.mux(packets)
        except (av.FFmpegError, OSError, ValueError) as exc:
            self._lost(f"lost {self.url}: {_reason(exc)}")
            return "dropped", None, 0
        return "sent", self._encoder, sum(p.size for p in packets)

    def _connect(self, frame: Frame, fps: float) -> bool:
        now = time.monotonic()
        if now < self._next_try:
            return False
        cfg = self.cfg
        assert cfg.url is not None
        out = None
        try:  # FFmpeg's RTSP muxer: ANNOUNCE, SETUP, RECORD; "timeout" bounds every socket wait (µs)
            out = av.open(cfg.url, "w", format="rtsp",
                          options={"rtsp_transport": "tcp", "timeout": str(int(cfg.io_timeout_s * 1e6))})
            w, h = coded_size(frame)
            stream = out.add_stream(self.encoder_name, rate=Fraction(fps).limit_denominator(1001))
            configure(stream.codec_context, cfg, self.encoder_name, w, h, fps)
            out.start_encoding()
        except (av.FFmpegError, OSError, ValueError) as exc:
            if out is not None:
                _close(out)
            self.failures += 1
            self._backoff(f"cannot push to {self.url}: {_reason(exc)}")
            return False
        self._out, self._encoder = out, Encoder(stream, w, h)
        if self._ever:
            self.reconnects += 1
        self._ever = True
        self._backoff_delay.reset()
        log.info("rtsp-out: pushing %dx%d %s to %s", w, h, self.encoder_name, self.url)
        return True

    def _backoff(self, why: str) -> None:
        delay = self._backoff_delay.next()
        log.warning("rtsp-out: %s; retrying in %.2g s", why, delay)
        self._next_try = time.monotonic() + delay

    def _lost(self, why: str) -> None:
        self.failures += 1
        self._disconnect()
        self._backoff(why)

    def _disconnect(self) -> None:
        out, self._out, self._encoder = self._out, None, None
        if out is not None:
            _close(out)

    def close(self) -> None:
        """Send what the encoder still holds, then TEARDOWN (bounded by the socket timeout)."""
        if self._out is not None and self._encoder is not None:
            try:
                self._out.mux(self._encoder.flush())
            except (av.FFmpegError, OSError, ValueError):
                pass
        self._disconnect()


def _close(out: av.container.OutputContainer) -> None:
    try:
        out.close()
    except (av.FFmpegError, OSError, ValueError) as exc:
        log.debug("rtsp-out: closing the push connection: %s", _reason(exc))


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
