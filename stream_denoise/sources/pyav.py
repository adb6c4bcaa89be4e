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


# Containers whose header states the duration from an index written when the file was finished
# (a cut file keeps the full figure); MPEG-TS and raw streams only estimate theirs from the bit rate.
_INDEXED = ("matroska", "mov", "mp4", "avi")


class PyAVStream:
    """An open container; yields its first video stream as RGB frames.

    ``file=True``: at the end, a file that decoded fewer frames than its header declares (frame count,
    or the duration of an indexed container) raises SourceError: truncated, not silently short.
    """

    def __init__(self, container: av.container.InputContainer, uri: str, read_timeout_s: float,
                 file: bool = False) -> None:
        self._container = container
        self._uri = uri
        self._read_timeout_s = read_timeout_s
        self._file = file
        rate = container.streams.video[0].average_rate
        self.fps: float | None = float(rate) if rate else None

    def frames(self, stats: SourceStats) -> Generator[tuple[np.ndarray, float | None], None, None]:
        """``(pixels (H, W, 3) uint8 RGB C-contiguous, pts seconds or None)`` until end of stream."""
        import av

        stream = self._container.streams.video[0]
        asked = time.monotonic()  # when the demuxer was last asked for a packet
        count, last = 0, None  # frames decoded, time of the last one
        try:
            for packet in self._container.demux(stream):
                try:
                    decoded = [(_rgb(f), f.time) for f in stream.decode(packet)]
                except (av.error.FFmpegError, ValueError) as exc:  # one corrupt packet: skip it
                    stats.decode_errors += 1
                    log.debug("%s: skipped an undecodable packet: %s", self._uri, exc)
                    decoded = []
                count += len(decoded)
                last = decoded[-1][1] if decoded else last
                yield from decoded
                asked = time.monotonic()
        except av.error.FFmpegError as exc:
            # the timeout interrupt surfaces as ExitError (sometimes InvalidDataError): judge by the wait
            if isinstance(exc, av.error.ExitError) or time.monotonic() - asked >= 0.45 * self._read_timeout_s:
                raise SourceTimeout(f"{self._uri}: no data for {self._read_timeout_s:g} s (stalled)") from exc
            raise SourceError(f"{self._uri}: read failed: {exc}") from exc
        if self._file:
            self._check_complete(count, last)

    def _check_complete(self, count: int, last: float | None) -> None:
        """SourceError when the file ended before the frames or the duration its header declares."""
        c, stream = self._container, self._container.streams.video[0]
        if stream.frames and count < stream.frames:
            raise SourceError(f"{self._uri}: truncated: {count} of the {stream.frames} frames its header declares")
        if stream.frames or not c.duration or not self.fps or not any(n in c.format.name for n in _INDEXED):
            return
        start = (c.start_time or 0) / 1e6
        end = start + c.duration / 1e6  # the container's duration, in AV_TIME_BASE (microseconds)
        reached = (last if last is not None else start) + 1 / self.fps
        if reached < end - 1.5 / self.fps:
            raise SourceError(f"{self._uri}: truncated: frames end at {reached - start:.2f} s of the "
                              f"{end - start:.2f} s its header declares")

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
                container = av.open(cfg.uri, options=options, timeout=timeout, metadata_errors="replace",
                                    hwaccel=HWAccel("cuda"))
            except (av.error.FFmpegError, RuntimeError, ValueError) as exc:
                self._hwaccel = False
                log.info("%s: CUDA decoding unavailable (%s); decoding in software", self.uri, exc)
        if container is None:
            t0 = time.monotonic()
            try:
                # metadata_errors: a file's tags in another encoding (or garbage) must not stop its frames
                container = av.open(cfg.uri, options=options, timeout=timeout, metadata_errors="replace")
            except av.error.FFmpegError as exc:
                if self._network and time.monotonic() - t0 >= 0.9 * cfg.open_timeout_s:
                    raise SourceTimeout(f"{self.uri}: no answer within {cfg.open_timeout_s:g} s") from exc
                raise SourceError(f"{self.uri}: cannot open: {exc.strerror or exc}") from exc
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.uri}: no video stream")
        # slice threading only: frame threading adds a frame of latency per thread, and at a damaged
        # packet it loses the frames still in its threads (2 of 12 on a cut file; slices: none)
        container.streams.video[0].thread_type = "SLICE"
        return PyAVStream(container, self.uri, cfg.read_timeout_s, file=not self._network)
