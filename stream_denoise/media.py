"""Reading recorded clips (files) as uint8 RGB frames: PyAV where installed, else OpenCV's FFmpeg (a GPU
machine may have only OpenCV). PyAV's and OpenCV's failures become :class:`SourceError` here, once.

Live sources (RTSP, cameras: ``sources/``) and the writers (``video_writer``, ``rtsp_out``) own their
own streams; everything that reads a whole recorded clip (fine-tuning, calibration, the training
corpus, the codec noise model) comes here.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import SourceError


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
