"""Local cameras (``0``, ``/dev/video0``) through OpenCV. The only module that imports ``cv2``."""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

import numpy as np

from ..config import SourceConfig
from ..errors import SourceError
from .base import SourceStats

log = logging.getLogger(__name__)


class CameraStream:
    """An open ``cv2.VideoCapture``; yields RGB frames until a read fails (treated as a disconnect)."""

    def __init__(self, cap: Any, uri: str) -> None:
        import cv2

        self._cap = cap
        self._uri = uri
        self.fps: float | None = float(cap.get(cv2.CAP_PROP_FPS)) or None

    def frames(self, stats: SourceStats) -> Generator[tuple[np.ndarray, float | None], None, None]:
        """``(pixels (H, W, 3) uint8 RGB C-contiguous, pts seconds or None)``; OpenCV gives BGR."""
        import cv2

        while True:
            try:
                ok, bgr = self._cap.read()
            except cv2.error as exc:
                raise SourceError(f"{self._uri}: read failed: {exc}") from exc
            if not ok or bgr is None:
                return
            rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB if bgr.ndim == 2 else cv2.COLOR_BGR2RGB)
            msec = float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
            yield np.ascontiguousarray(rgb), (msec / 1000.0 if msec > 0 else None)

    def close(self) -> None:
        self._cap.release()


class CameraOpener:
    """Opens ``cfg.uri`` (a camera index or device path) with OpenCV; call it once per (re)connect."""

    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg

    def __call__(self) -> CameraStream:
        import cv2

        cfg = self.cfg
        target: int | str = int(cfg.uri) if cfg.uri.isdigit() else cfg.uri
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cfg.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cfg.read_timeout_s * 1000),
        ]  # fmt: skip
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its "[ WARN:0@...]" lines: our error says it
        try:
            cap = cv2.VideoCapture(target, cv2.CAP_ANY, params)
        except cv2.error as exc:
            raise SourceError(f"{cfg.uri}: cannot open camera: {exc}") from exc
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{cfg.uri}: cannot open camera (missing device, busy, or no permission)")
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver queue short: newest frames
        return CameraStream(cap, cfg.uri)
