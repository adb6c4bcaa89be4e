"""The one reconnect delay: capped exponential backoff, used by sources, the multi-camera and Ray
workers (``sources.open_retrying``) and the RTSP output (push reconnects, server restarts)."""

from __future__ import annotations


class Backoff:
    """``initial`` seconds, doubled after each failure up to ``maximum``; :meth:`reset` after a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self.delay = initial  # what the next wait takes

    def next(self) -> float:
        """The delay to wait now; the next one doubles (capped)."""
        delay = self.delay
        self.delay = min(2 * delay, self.maximum)
        return delay

    def reset(self) -> None:
        self.delay = self.initial
