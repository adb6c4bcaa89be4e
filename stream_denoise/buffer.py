"""The temporal window: a ring of recent frames that says when an output frame is ready.

Window of K frames with the output frame at slot ``target``: centered (target = K//2, adds
K//2 frames of latency) or causal (target = K-1, no added latency).

* Stream start: slots before the first frame are filled by reflecting about it, never by repeating
  the output frame (when another frame exists), exactly as the network was trained.
* Stream end / ``flush()``: the look-ahead slots reflect about the last frame.
* Dropped frames (gaps in ``Frame.index``) do not reset the window: the network sees the frames
  that arrived, slightly farther apart.
* A new ``segment`` (reconnect, loop) or a new frame size resets the window: the old segment's
  pending frames are flushed first, so nothing is lost and no window mixes two segments.
"""

from __future__ import annotations

from collections import deque

from .frame import Frame


def reflect_indices(t: int, frames: int, target: int, length: int) -> list[int]:
    """Indices (into a segment of ``length`` frames) of the window whose slot ``target`` is t.

    A slot past either end of the segment mirrors about t (t-2, t-1, t, t+1, t+2 -> t+2, t+1, t, ...),
    so it never repeats frame t while another frame exists: repeating it would let training see the
    output frame's own noise twice. Segments too short for that take the nearest other frame.
    """
    idx = []
    for j in range(frames):
        o = j - target
        i = t + o
        if not 0 <= i < length:
            i = t - o
        if not 0 <= i < length:
            others = [k for k in range(length) if k != t] or [t]
            i = min(others, key=lambda k: (abs(k - (t + o)), k))
        idx.append(i)
    return idx


class TemporalBuffer:
    """Feeds windows of K frames. ``push(frame)`` returns the windows that became ready, each a
    tuple (output frame, list of K frames oldest -> newest)."""

    def __init__(self, frames: int, target: int) -> None:
        self.frames, self.target = frames, target
        self.lookahead = frames - 1 - target
        self._ring: deque[Frame] = deque(maxlen=2 * frames)
        self._count = 0  # frames in the current segment
        self._next = 0  # position in the segment of the next frame to emit
        self.resets = 0

    def push(self, frame: Frame) -> list[tuple[Frame, list[Frame]]]:
        out: list[tuple[Frame, list[Frame]]] = []
        if self._ring and self._breaks(self._ring[-1], frame):
            out = self.flush()
            self.resets += 1
        self._ring.append(frame)
        self._count += 1
        while self._next + self.lookahead < self._count:
            out.append(self._window(self._next, self._count))
            self._next += 1
        return out

    def flush(self) -> list[tuple[Frame, list[Frame]]]:
        """Emit every pending frame (end of stream or segment) and reset."""
        out = [self._window(t, self._count) for t in range(self._next, self._count)]
        self._ring.clear()
        self._count = self._next = 0
        return out

    def _window(self, t: int, length: int) -> tuple[Frame, list[Frame]]:
        first = self._count - len(self._ring)  # segment position of ring[0]
        idx = reflect_indices(t, self.frames, self.target, length)
        return self._ring[t - first], [self._ring[i - first] for i in idx]

    @staticmethod
    def _breaks(prev: Frame, new: Frame) -> bool:
        return new.segment != prev.segment or new.source != prev.source or new.pixels.shape != prev.pixels.shape
