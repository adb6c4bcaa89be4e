"""The one type that flows through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One video frame and where it came from.

    pixels:      (H, W, 3) uint8, **RGB**, C-contiguous. Fixed where frames enter (sources).
    index:       per-source decode counter, +1 per decoded frame; a gap means frames were dropped.
    pts:         presentation time in seconds (stream clock), or None when the source has none.
    captured_at: wall-clock time (``time.time()``) when the frame was decoded.
    source:      name of the source (camera name or URI).
    segment:     increments on every discontinuity (reconnect, loop restart, resolution change);
                 the temporal buffer resets when it changes.
    generation:  the model generation that made the pixels: 0 for the configured model (and for
                 frames no model touched), +1 each time ``run --adapt`` swaps in an adapted model.
    """

    pixels: np.ndarray
    index: int
    pts: float | None
    captured_at: float
    source: str
    segment: int = 0
    generation: int = 0

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def with_pixels(self, pixels: np.ndarray) -> Frame:
        """A new frame with the same metadata and other pixels (outputs are built, not mutated)."""
        return replace(self, pixels=pixels)


def check_pixels(pixels: np.ndarray) -> None:
    """What the denoisers take: (H, W, 3) uint8 RGB; else ValueError with one line."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"frames must be (H, W, 3) uint8 RGB, got {pixels.shape} {pixels.dtype}")
