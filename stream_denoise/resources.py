"""Closing a stack of resources in reverse order, carrying on past failures."""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)


def close_all(closers: list[Callable[[], object]]) -> None:
    """Call and pop every closer, last opened first; a failure is logged and the rest still close."""
    while closers:
        try:
            closers.pop()()
        except Exception as exc:  # closing must go on for the rest
            log.warning("error while closing: %s", exc)


class Closing:
    """Base of objects that own resources: ``self._closers`` closes in reverse order on ``close()``
    or at the end of a ``with`` block."""

    _closers: list[Callable[[], object]]

    def close(self) -> None:
        close_all(self._closers)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
