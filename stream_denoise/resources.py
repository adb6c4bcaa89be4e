"""Closing a stack of resources in reverse order, carrying on past failures."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def close_all(closers: list[Callable[[], object]]) -> None:
    """Call and pop every closer, last opened first; a failure is logged and the rest still close."""
    while closers:
        try:
            closers.pop()()
        except Exception as exc:  # closing must go on for the rest
            log.warning("error while closing: %s", exc)
