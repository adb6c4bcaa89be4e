"""Reading video through PyAV (FFmpeg), and PyAV's errors translated, in one module:

- the streams of ``sources/`` (files and RTSP: :class:`PyAVOpener` opens with bounded timeouts,
  :class:`PyAVStream` decodes, a stall is SourceTimeout, a truncated file SourceError);
- whole recorded clips (fine-tuning, calibration, the training corpus, the codec noise model):
  :func:`read_clip`, :func:`decode`, :func:`probe`, with OpenCV's FFmpeg where PyAV is not installed
  (a GPU machine may have only OpenCV).

Writers (``video_writer``, ``rtsp_out``) own their output containers. ``av`` is imported inside the
functions that use it.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import SourceConfig
from .errors import SourceError, SourceTimeout
from .sources.base import SourceStats, redact

if TYPE_CHECKING:
    import av.container

log = logging.getLogger(__name__)


def decode(path: str | Path | bytes) -> Iterator[np.ndarray]:
    """The frames of a clip (a file, or an encoded file's bytes) in order, each (H, W, 3) uint8 RGB."""
    try:
        import av
    except ImportError:
        yield from _decode_cv2(path)
        return
    what = "an encoded clip" if isinstance(path, bytes) else str(path)
    try:
        with av.open(io.BytesIO(path) if isinstance(path, bytes) else str(path), "r") as c:
            for frame in c.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, OSError) as exc:
        raise SourceError(f"cannot read clip {what}: {exc}") from exc


def _decode_cv2(path: str | Path | bytes) -> Iterator[np.ndarray]:
    import tempfile

    import cv2

    if isinstance(path, bytes):
        with tempfile.NamedTemporaryFile(suffix=".mkv") as tmp:
            tmp.write(path)
            tmp.flush()
            yield from _decode_cv2(tmp.name)
        return
    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            yield np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()


def read_clip(path: str | Path | bytes, max_frames: int | None = None, size: tuple[int, int] | None = None,
              start: int = 0) -> np.ndarray:
    """A clip as (T, H, W, 3) uint8 RGB: frames ``start`` .. ``start + max_frames``; ``size`` = (W, H)
    resizes with INTER_AREA. SourceError when it has no decodable frame."""
    frames: list[np.ndarray] = []
    for i, img in enumerate(decode(path)):
        if i < start:
            continue
        if size is not None and (img.shape[1], img.shape[0]) != size:
            import cv2

            img = np.asarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA))
        frames.append(img)
        if max_frames is not None and len(frames) >= max_frames:
            break
    if not frames:
        raise SourceError(f"clip {'(bytes)' if isinstance(path, bytes) else path} has no decodable video frames")
    return np.stack(frames)


def probe(path: str | Path) -> tuple[int, int, int]:
    """(frames, height, width) of a clip's first video stream; frames counted by demuxing when the
    container does not say."""
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise SourceError(f"clip {path} has no video stream")
            s = c.streams.video[0]
            h, w = s.codec_context.height, s.codec_context.width
            n = int(s.frames or 0)
            if n <= 0:
                n = sum(1 for p in c.demux(s) if p.size)
    except (av.error.FFmpegError, OSError) as exc:
        raise SourceError(f"cannot read clip {path}: {exc}") from exc
    if n <= 0 or h <= 0 or w <= 0:
        raise SourceError(f"clip {path} has no decodable video frames")
    return n, h, w


# ---------------------------------------------------------------------------------------------------
# Streams of sources/: files and RTSP
# ---------------------------------------------------------------------------------------------------

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
