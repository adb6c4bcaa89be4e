"""Write frames to a video file a person can play (PyAV).

=========== ======================= ==========================================================
extension   codec                   notes
=========== ======================= ==========================================================
``.mkv``    FFV1, pix_fmt ``bgr0``  lossless: decoded RGB equals what was written, bit for bit
``.mp4``    H.264 (libx264)         yuv420p, ``crf`` (default 18); odd sizes padded to even
``.mov``    H.264 (libx264)         as ``.mp4``
``.avi``    MJPEG                   yuvj420p; odd sizes padded to even
=========== ======================= ==========================================================

Padding repeats the last row/column, so every input pixel is kept; the file's size is then
``(width + width % 2) x (height + height % 2)``.
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

from .errors import ConfigError

log = logging.getLogger(__name__)

SUFFIXES = (".mkv", ".mp4", ".mov", ".avi")


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
        if suffix not in SUFFIXES:
            raise ConfigError(f"{self.path}: unsupported video extension {suffix!r} (use {', '.join(SUFFIXES)})")
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
        parent = self.path.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ConfigError(f"cannot write {self.path}: {parent} is not a writable directory")
        try:
            self._container: av.container.OutputContainer | None = av.open(str(self.path), "w")
        except (av.error.FFmpegError, OSError) as exc:
            raise ConfigError(f"cannot write {self.path}: {exc}") from None
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
        except av.error.FFmpegError as exc:
            raise OSError(f"{self.path}: encoding failed: {exc}") from None
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (idempotent)."""
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            for packet in self._stream.encode():
                container.mux(packet)
        finally:
            container.close()
        log.debug("wrote %d frames to %s", self.frames_written, self.path)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
