"""Counters and latency windows of a running pipeline, and the one-line status built from them."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Window:
    """The last ``size`` samples of a latency, in seconds (bounded memory)."""

    def __init__(self, size: int = 1000) -> None:
        self._d: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, v: float) -> None:
        with self._lock:
            self._d.append(v)

    def percentile(self, q: float) -> float:
        with self._lock:
            return float(np.percentile(self._d, q)) if self._d else float("nan")

    def values(self) -> list[float]:
        with self._lock:
            return list(self._d)


@dataclass
class Metrics:
    """Everything a status line, a health check or a benchmark reads. Written by the stage threads."""

    started: float = field(default_factory=time.monotonic)
    frames_in: int = 0
    frames_out: int = 0
    dropped_queue: int = 0  # denoised frames dropped because the publish stage fell behind
    source_timeouts: int = 0
    last_output_at: float = 0.0  # time.time() of the last published frame
    latency: dict[str, Window] = field(
        default_factory=lambda: {k: Window() for k in ("wait", "pre", "infer", "post", "publish", "e2e")}
    )
    _last: tuple[float, int, int] = (0.0, 0, 0)

    def rates(self) -> tuple[float, float]:
        """(fps in, fps out) since the previous call."""
        now = time.monotonic()
        t, fin, fout = self._last
        if not t:
            t = self.started
        dt = max(now - t, 1e-9)
        self._last = (now, self.frames_in, self.frames_out)
        return (self.frames_in - fin) / dt, (self.frames_out - fout) / dt

    def status(self, source_drops: int, reconnects: int, publish_drops: int, final: bool = False) -> str:
        """The status line: rates since the previous line, or (``final``) averages over the whole run."""
        if final:
            took = max(time.monotonic() - self.started, 1e-9)
            fin, fout = self.frames_in / took, self.frames_out / took
        else:
            fin, fout = self.rates()
        ms = {k: 1000 * w.percentile(50) for k, w in self.latency.items()}
        return (
            f"fps in {fin:5.1f} out {fout:5.1f} | ms pre {ms['pre']:.1f} infer {ms['infer']:.1f} post {ms['post']:.1f} "
            f"publish {ms['publish']:.1f} e2e p50 {ms['e2e']:.0f} p99 {1000 * self.latency['e2e'].percentile(99):.0f} | "
            f"dropped source {source_drops} queue {self.dropped_queue} publish {publish_drops} | reconnects {reconnects}"
        )

    def snapshot(self) -> dict[str, Any]:
        """Counters and gauges by name (see ``health.METRICS``); ``latency_seconds`` is
        ``{stage: {quantile: seconds}}`` over the last samples (NaN before any)."""
        return {"frames_in": self.frames_in, "frames_out": self.frames_out, "dropped_queue": self.dropped_queue,
                "source_timeouts": self.source_timeouts, "last_output_at": self.last_output_at,
                "uptime_s": time.monotonic() - self.started,
                "latency_seconds": {k: {"0.5": w.percentile(50), "0.99": w.percentile(99)}
                                    for k, w in self.latency.items()}}
