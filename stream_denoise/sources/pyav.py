"""Files and RTSP through PyAV (FFmpeg). The only module that imports ``av``."""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np

from ..config import SourceConfig
from ..errors import SourceError, SourceTimeout
from .base import SourceStats, redact

if TYPE_CHECKING:
    import av.container

log = logging.getLogger(__name__)

# Low-latency demuxing for network streams: open in ~0.2 s instead of ~1.2 s, no input buffering.
NETWORK_OPTIONS = {"probesize": "32", "analyzeduration": "0", "fflags": "nobuffer", "flags": "low_delay"}


class PyAVStream:
    """An open container; yields its first video stream as RGB frames."""

    def __init__(self, container: av.container.InputContainer, uri: str, read_timeout_s: float) -> None:
        self._container = container
        self._uri = uri
        self._read_timeout_s = read_timeout_s
        rate = container.streams.video[0].average_rate
        self.fps: float | None = float(rate) if rate else None

    def frames(self, stats: SourceStats) -> Generator[tuple[np.ndarray, float | None], None, None]:
        """``(pixels (H, W, 3) uint8 RGB C-contiguous, pts seconds or None)`` until end of stream."""
        import av

        stream = self._container.streams.video[0]
        asked = time.monotonic()  # when the demuxer was last asked for a packet
        try:
            for packet in self._container.demux(stream):
                try:
                    decoded = [(_rgb(f), f.time) for f in stream.decode(packet)]
                except (av.error.FFmpegError, ValueError) as exc:  # one corrupt packet: skip it
                    stats.decode_errors += 1
                    log.debug("%s: skipped an undecodable packet: %s", self._uri, exc)
                    decoded = []
                yield from decoded
                asked = time.monotonic()
        except av.error.FFmpegError as exc:
            # the timeout interrupt surfaces as ExitError (sometimes InvalidDataError): judge by the wait
            if isinstance(exc, av.error.ExitError) or time.monotonic() - asked >= 0.45 * self._read_timeout_s:
                raise SourceTimeout(f"{self._uri}: no data for {self._read_timeout_s:g} s (stalled)") from exc
            raise SourceError(f"{self._uri}: read failed: {exc}") from exc

    def close(self) -> None:
        self._container.close()


def _rgb(frame: av.VideoFrame) -> np.ndarray:
    return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))


class PyAVOpener:
    """Opens ``cfg.uri`` (a file or ``rtsp(s)://``) with bounded timeouts; call it once per (re)connect."""

    def __init__(self, cfg: SourceConfig, *, network: bool) -> None:
        self.cfg = cfg
        self.uri = redact(cfg.uri)
        self._network = network
        self._hwaccel = cfg.hwaccel  # turned off for good after the first failure

    def __call__(self) -> PyAVStream:
        import av

        cfg = self.cfg
        options = {**NETWORK_OPTIONS, "rtsp_transport": cfg.transport} if self._network else {}
        # A stalled RTSP read gives up after twice PyAV's read timeout (measured with FFmpeg 8 / PyAV 18),
        # so ask for half: the reader then raises after ~read_timeout_s.
        timeout = (cfg.open_timeout_s, cfg.read_timeout_s / 2 if self._network else cfg.read_timeout_s)
        container = None
        if self._hwaccel:
            from av.codec.hwaccel import HWAccel

            try:
                container = av.open(cfg.uri, options=options, timeout=timeout, hwaccel=HWAccel("cuda"))
            except (av.error.FFmpegError, RuntimeError, ValueError) as exc:
                self._hwaccel = False
                log.info("%s: CUDA decoding unavailable (%s); decoding in software", self.uri, exc)
        if container is None:
            t0 = time.monotonic()
            try:
                container = av.open(cfg.uri, options=options, timeout=timeout)
            except av.error.FFmpegError as exc:
                if self._network and time.monotonic() - t0 >= 0.9 * cfg.open_timeout_s:
                    raise SourceTimeout(f"{self.uri}: no answer within {cfg.open_timeout_s:g} s") from exc
                raise SourceError(f"{self.uri}: cannot open: {exc.strerror or exc}") from exc
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.uri}: no video stream")
        # frame threading adds a frame of latency per thread: slices only for live streams
        container.streams.video[0].thread_type = "SLICE" if self._network else "AUTO"
        return PyAVStream(container, self.uri, cfg.read_timeout_s)
