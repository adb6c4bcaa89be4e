"""The rolling sample of a live stream that adaptation trains on: short clips spread over time.

Every ``every_s`` seconds (wall clock, as frames were captured) a clip of ``clip_frames`` consecutive frames is recorded
(a ``crop`` x ``crop`` region at a random place, the same for every frame of the clip; a frame that
breaks the run: another segment or size, ends the clip unrecorded). The newest ``held`` clips are
the held-out set candidates are scored on and never trained on; a clip leaving it joins the
training reservoir of ``slots`` clips by reservoir sampling (Vitter's algorithm R), so the
training clips are a uniform sample of the whole time since the sample began, not only the last
seconds. Memory is bounded: at most ``(slots + held + 1) * clip_frames`` crops.
``clear()`` starts a new sample (the noise changed: old clips no longer describe the camera).
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from ..frame import Frame


class Reservoir:
    def __init__(self, slots: int, held: int, clip_frames: int, crop: int, every_s: float, seed: int = 0) -> None:
        self.slots, self.clip_frames, self.crop, self.every_s = slots, clip_frames, crop, every_s
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # offer() runs on the inference thread, snapshot() on the adapter's
        self._train: list[np.ndarray] = []
        self._held: deque[np.ndarray] = deque(maxlen=held)
        self._recording: list[np.ndarray] = []
        self._last: Frame | None = None  # the previous frame of the clip being recorded
        self._box: tuple[int, int] = (0, 0)
        self._next_start: float | None = None  # stream time (s) of the next clip start
        self.offered = 0  # clips that left the held-out set since the sample began (algorithm R's n)
        self._restart = False

    def offer(self, frame: Frame) -> None:
        """Look at one input frame (cheap unless it is recorded: one crop copy)."""
        if self._restart:  # clear() was called (from another thread): forget the clip being recorded
            self._recording, self._next_start, self._restart = [], None, False
        t = frame.captured_at  # wall clock: a looping file's pts start again
        if self._recording:
            prev = self._last
            assert prev is not None
            if (frame.segment, frame.source, frame.pixels.shape) != (prev.segment, prev.source, prev.pixels.shape) \
                    or frame.index != prev.index + 1:
                self._recording = []  # not consecutive: drop the partial clip, start again later
            else:
                self._add(frame)
                return
        if self._next_start is None or t >= self._next_start:
            self._next_start = t + self.every_s
            h, w = frame.pixels.shape[:2]
            self._box = (int(self._rng.integers(0, max(1, h - self.crop + 1))),
                         int(self._rng.integers(0, max(1, w - self.crop + 1))))
            self._add(frame)

    def _add(self, frame: Frame) -> None:
        y, x = self._box
        self._recording.append(frame.pixels[y : y + self.crop, x : x + self.crop].copy())
        self._last = frame
        if len(self._recording) == self.clip_frames:
            clip, self._recording = np.stack(self._recording), []
            with self._lock:
                if self._restart:
                    return  # recorded before a clear()
                if len(self._held) == self._held.maxlen:
                    self._admit(self._held[0])
                self._held.append(clip)

    def _admit(self, clip: np.ndarray) -> None:
        self.offered += 1
        if len(self._train) < self.slots:
            self._train.append(clip)
        else:
            j = int(self._rng.integers(0, self.offered))
            if j < self.slots:
                self._train[j] = clip

    def clear(self) -> None:
        """Start a new sample (any thread): the clips held go now, the one being recorded at the next offer."""
        with self._lock:
            self._train, self.offered, self._restart = [], 0, True
            self._held.clear()

    def snapshot(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(training clips, held-out clips), each (T, h, w, 3) uint8 RGB (never written again)."""
        with self._lock:
            return list(self._train), list(self._held)

    @property
    def samples(self) -> int:
        """Frames held (training and held-out clips)."""
        with self._lock:
            return (len(self._train) + len(self._held)) * self.clip_frames

    def ready(self, min_clips: int) -> bool:
        with self._lock:
            return len(self._train) >= min_clips and len(self._held) == self._held.maxlen
