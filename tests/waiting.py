"""Polling a condition in tests that wait on threads, sockets and servers."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(cond: Callable[[], object], timeout: float, poll: float = 0.05) -> bool:
    """True as soon as ``cond()`` is true, else its value once more after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll)
    return bool(cond())
