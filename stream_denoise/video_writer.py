"""Write frames to a video file a person can play (PyAV).

=========== ======================= ==========================================================
extension   codec                   notes
=========== ======================= ==========================================================
``.mkv``    FFV1, pix_fmt ``bgr0``  lossless: decoded RGB equals what was written, bit for bit
``.mp4``    H.264 (libx264)         yuv420p, ``crf`` (default 18); odd sizes padded to even
``.mov``    H.264 (libx264)         as ``.mp4``
``.avi``    MJPEG                   yuvj420p (lossy; a warning says so); odd sizes padded to even
=========== ======================= ==========================================================

Padding repeats the last row/column, so every input pixel is kept; the file's size is then
``(width + width % 2) x (height + height % 2)``.

Frames go to ``NAME.PID.part`` (:func:`stream_denoise.files.partial_path`) and the finished file is
renamed to ``NAME`` by :meth:`VideoWriter.close`, so a killed process never leaves a corrupt file under
the name asked for. :class:`Recording` starts a new file (``NAME.1.mkv``, ...) when the frame size
changes, so a resolution change loses no frame.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import av
import numpy as np

from .errors import ConfigError, OutputError
from .files import partial_path

log = logging.getLogger(__name__)

FORMATS = {".mkv": "matroska", ".mp4": "mp4", ".mov": "mov", ".avi": "avi"}  # muxer of each extension
SUFFIXES = tuple(FORMATS)


def _rate(fps: float) -> Fraction:
    """fps as a fraction, with the NTSC rates (23.976, 29.97, 59.94, ...) exact."""
    for n in (24, 30, 48, 60, 120):
        if abs(fps - n * 1000 / 1001) < 1e-3:
            return Fraction(n * 1000, 1001)
    return Fraction(fps).limit_denominator(1000)


def _open_stream(container: Any, codecs: tuple[str, ...], rate: Fraction) -> Any:
    for name in codecs:
        try:
            return container.add_stream(name, rate=rate)
        except (av.error.FFmpegError, ValueError):  # UnknownCodecError is a ValueError
            continue
    raise ConfigError(f"none of the encoders {', '.join(codecs)} is available in this PyAV build")


class VideoWriter:
    """``with VideoWriter("out.mkv", w, h, fps=25) as vw: vw.write(rgb)`` (H, W, 3) uint8 frames.

    ``color="BGR"`` makes :meth:`write` take BGR images (e.g. from :mod:`stream_denoise.wire`).
    ``write(image, pts=seconds)`` places frames at real timestamps (kept strictly increasing);
    without ``pts`` frames are 1/fps apart.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: float = 30.0,
        *,
        color: Literal["RGB", "BGR"] = "RGB",
        crf: int = 18,
    ) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        check_video_path(self.path)
        if not (1 <= width <= 16384 and 1 <= height <= 16384):
            raise ConfigError(f"{self.path}: bad video size {width}x{height}")
        if not (0 < fps <= 1000):
            raise ConfigError(f"{self.path}: fps must be in (0, 1000], got {fps}")
        if color not in ("RGB", "BGR"):
            raise ConfigError(f"color must be RGB or BGR, got {color!r}")
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.lossless = suffix == ".mkv"
        self._format = "rgb24" if color == "RGB" else "bgr24"
        pad = not self.lossless
        self.out_width = self.width + (self.width % 2 if pad else 0)
        self.out_height = self.height + (self.height % 2 if pad else 0)
        self.frames_written = 0
        self._rate = _rate(self.fps)
        # AVI is constant-rate (one tick per frame); the others get 1/90000 s and a 1 ms minimum step
        # (Matroska stores milliseconds), so real timestamps survive.
        self._time_base = 1 / self._rate if suffix == ".avi" else Fraction(1, 90000)
        self._min_step = 1 if suffix == ".avi" else 90
        self._last_pts = -1
        self._t0: float | None = None
        if suffix == ".avi":
            log.warning("%s: .avi is written as MJPEG (lossy); use .mkv for a lossless recording", self.path)
        self._partial = partial_path(self.path)
        try:
            self._container: av.container.OutputContainer | None = av.open(str(self._partial), "w", format=FORMATS[suffix])
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot write {self.path}: {_reason(exc)}") from None
        try:
            if suffix == ".mkv":
                self._stream = _open_stream(self._container, ("ffv1",), self._rate)
                self._stream.pix_fmt = "bgr0"
                self._stream.options = {"level": "3", "slicecrc": "1"}
            elif suffix == ".avi":
                self._stream = _open_stream(self._container, ("mjpeg",), self._rate)
                self._stream.pix_fmt = "yuvj420p"
                self._stream.options = {"q:v": "3"}
            else:
                self._stream = _open_stream(self._container, ("libx264", "h264"), self._rate)
                self._stream.pix_fmt = "yuv420p"
                self._stream.options = {"crf": str(int(crf)), "preset": "veryfast"}
            self._stream.width, self._stream.height = self.out_width, self.out_height
            self._stream.codec_context.time_base = self._time_base
            self._stream.time_base = self._time_base
        except BaseException:
            self._container.close()
            self._partial.unlink(missing_ok=True)
            raise

    def write(self, image: np.ndarray, pts: float | None = None) -> None:
        """Append one (height, width, 3) uint8 frame in the writer's color order."""
        if self._container is None:
            raise ValueError(f"{self.path}: writer is closed")
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise ValueError(f"frame is {image.shape} {image.dtype}, writer expects ({self.height}, {self.width}, 3) uint8")
        if (self.out_height, self.out_width) != image.shape[:2]:
            image = np.pad(image, ((0, self.out_height - self.height), (0, self.out_width - self.width), (0, 0)), mode="edge")
        if pts is None:
            seconds: Fraction | float = self.frames_written / self._rate
        else:
            self._t0 = pts if self._t0 is None else self._t0
            seconds = pts - self._t0
        ticks = round(seconds / self._time_base)
        if self._last_pts >= 0:
            ticks = max(ticks, self._last_pts + self._min_step)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=self._format)
        frame.pts, frame.time_base = ticks, self._time_base
        self._last_pts = ticks
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot write {self.path}: {_reason(exc)}") from None
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder, finish the file and give it its final name (idempotent). Without a
        frame written there is no file; a file that cannot be finished keeps its ``.part`` name."""
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            try:
                for packet in self._stream.encode():
                    container.mux(packet)
            finally:
                container.close()
        except (av.error.FFmpegError, OSError) as exc:
            kept = f"; the frames written so far are in {self._partial}" if self._partial.exists() else ""
            raise OutputError(f"cannot finish {self.path}: {_reason(exc)}{kept}") from None
        if self.frames_written == 0:
            self._partial.unlink(missing_ok=True)
            return
        try:
            os.replace(self._partial, self.path)
        except OSError as exc:
            raise OutputError(f"cannot rename {self._partial} to {self.path}: {_reason(exc)}") from None
        log.debug("wrote %d frames to %s", self.frames_written, self.path)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def check_video_path(path: Path) -> None:
    """ConfigError unless ``path`` has a video extension and a file can be created in its folder
    (OutputError when creating one fails): what a writer of ``path`` needs, checked before any work."""
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"{path}: unsupported video extension {path.suffix!r} (use {', '.join(SUFFIXES)})")
    parent = path.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot write {path}: {parent} is not a writable directory")
    probe = partial_path(path)
    try:
        probe.open("ab").close()
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
    probe.unlink(missing_ok=True)


class Recording:
    """Frames of any size to a video file: ``with Recording("out.mkv", fps) as rec: rec.write(rgb)``.

    The first file takes the first frame's size; when the size changes, that file is finished and
    the recording goes on in ``out.1.mkv``, ``out.2.mkv``, ... (logged once per change). ``paths``
    lists the files, ``frames_written`` counts frames over all of them. Checks at construction that
    the folder is writable.
    """

    def __init__(self, path: str | Path, fps: float = 30.0, *, color: Literal["RGB", "BGR"] = "RGB") -> None:
        self.path = Path(path)
        check_video_path(self.path)
        self.fps, self.color = fps, color
        self.paths: list[Path] = []
        self.first_size = (0, 0)  # (width, height) of the first file
        self.frames_written = 0
        self._writer: VideoWriter | None = None

    def write(self, image: np.ndarray, pts: float | None = None) -> None:
        """Append one (H, W, 3) uint8 frame (in ``color`` order), at ``pts`` seconds when given."""
        h, w = image.shape[:2]
        if self._writer is not None and (w, h) != (self._writer.width, self._writer.height):
            self._writer.close()
            self._writer = None
        if self._writer is None:
            target = self.path.with_name(f"{self.path.stem}.{len(self.paths)}{self.path.suffix}") if self.paths else self.path
            if self.paths:
                log.warning("frame size changed to %dx%d: the recording goes on in %s", w, h, target)
            self._writer = VideoWriter(target, w, h, self.fps, color=self.color)
            self.paths.append(target)
            self.first_size = self.first_size if len(self.paths) > 1 else (w, h)
        self._writer.write(image, pts)
        self.frames_written += 1

    def close(self) -> None:
        """Finish the current file (idempotent)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class StreamClock:
    """Where each frame of a stream goes in a recording, in seconds from its first frame.

    Within a segment, the frames' ``pts`` (the source's clock: a 10 fps stream stays 10 fps, dropped
    frames leave their gap); across segments (a reconnect or a loop restarts pts) and for frames
    without pts, the wall-clock time between their captures (``captured_at``).
    """

    def __init__(self) -> None:
        self._segment: int | None = None
        self._offset: float | None = None  # recording time minus pts in the current segment
        self._last: tuple[float, float] | None = None  # (recording time, captured_at) of the previous frame

    def __call__(self, pts: float | None, captured_at: float, segment: int) -> float:
        if self._last is None:
            t = 0.0
        elif pts is not None and self._offset is not None and segment == self._segment:
            t = pts + self._offset
        else:
            t = self._last[0] + max(captured_at - self._last[1], 0.0)
        self._offset = None if pts is None else t - pts
        self._segment, self._last = segment, (t, captured_at)
        return t
