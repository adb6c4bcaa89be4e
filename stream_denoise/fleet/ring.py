"""A camera's frames in shared memory: one writer (its decode worker), one reader (the inference lanes).

One :class:`multiprocessing.shared_memory.SharedMemory` block per camera holds a small control
area, each slot's metadata and ``slots`` pixel slots of ``max_frame`` (H * W * 3 bytes). The writer
copies each decoded frame into a free slot (the one copy) and appends the slot to the positions
written; the reader hands out :class:`~stream_denoise.frame.Frame` objects whose pixels are
*views* of their slot, held until it releases them (a temporal window needs its last K frames).
A slot is free when no unread position and no held frame uses it, so frames the reader skips
free their slots at once and a window's frames stay put however far apart they were taken. The
counters, the position -> slot table and the held flags are read and written under one
cross-process lock (its acquire and release order the pixel writes before the counter on every
CPU, ARM included); pixels are copied outside it.

Drops, "newest wins", per camera: a live camera's reader takes only the newest unread frame and
counts the ones it skips (``skipped``); a writer that finds no free slot (its reader stalled)
drops the new frame and counts it (``ring_full``). A file's frames are all taken in order and its
writer waits for room instead (``lossless``). Nothing grows: the slots are allocated once.

The worker's view of its source (decoded, dropped, reconnects, decode errors, connected, state,
fps) is written into the control area too, so the inference process shows it without messages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing as mp
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from ..frame import Frame

# control words (int64)
_WRITTEN, _NEXT, _ENDED, _RING_FULL, _SKIPPED, _DECODED, _SRC_DROPPED, _RECONNECTS, _DECODE_ERRORS, \
    _CONNECTED, _STATE, _TIMEOUTS, _TOO_LARGE, _TAKEN, _WAITING = range(15)
_CTRL_INTS = 16
_FPS, _LAST_AT = 0, 1  # control floats
_CTRL_FLOATS = 4
_ERROR_BYTES = 256  # the worker's last error message (utf-8, NUL-padded)
_META = 7  # per slot (float64): index, segment, height, width, pts (NaN: none), captured_at, generation

STATES = ("starting", "connecting", "running", "ended", "failed")


@dataclass(frozen=True)
class RingSpec:
    """What a process needs to attach a ring (picklable: passed to the worker at spawn)."""

    name: str  # the shared-memory block
    camera: str  # frames read from the ring carry this source name
    slots: int
    max_frame: tuple[int, int]  # (width, height) of the largest frame a slot holds
    lock: Any  # a multiprocessing.Lock
    room: Any  # a multiprocessing.Semaphore: the reader wakes a writer waiting for a free slot

    @property
    def slot_bytes(self) -> int:
        w, h = self.max_frame
        return w * h * 3

    @property
    def size(self) -> int:
        return 8 * (_CTRL_INTS + _CTRL_FLOATS + self.slots * (_META + 1)) + _ERROR_BYTES + self.slots * (1 + self.slot_bytes)


@dataclass
class SourceView:
    """The worker's counters of its source, as the inference process reads them."""

    frames_decoded: int
    frames_dropped: int
    reconnects: int
    decode_errors: int
    connected: bool
    timeouts: int
    state: str
    fps: float | None
    last_frame_at: float | None


class FrameRing:
    """``FrameRing.create(camera, slots, max_frame)`` in the owning process; ``FrameRing(spec)`` to attach."""

    def __init__(self, spec: RingSpec, shm: shared_memory.SharedMemory | None = None) -> None:
        self.spec = spec
        self._shm = shm or shared_memory.SharedMemory(name=spec.name)
        self._owner = shm is not None
        buf = self._shm.buf
        n_ctrl = 8 * _CTRL_INTS
        n_float = 8 * _CTRL_FLOATS
        n_meta = 8 * spec.slots * _META
        self._ctrl = np.ndarray((_CTRL_INTS,), np.int64, buf, 0)
        self._floats = np.ndarray((_CTRL_FLOATS,), np.float64, buf, n_ctrl)
        self._meta = np.ndarray((spec.slots, _META), np.float64, buf, n_ctrl + n_float)
        at = n_ctrl + n_float + n_meta
        self._slot_of = np.ndarray((spec.slots,), np.int64, buf, at)  # position % slots -> its slot (unread ones)
        self._held_flags = np.ndarray((spec.slots,), np.uint8, buf, at + 8 * spec.slots)  # 1: the reader holds it
        at += 9 * spec.slots
        self._error = np.ndarray((_ERROR_BYTES,), np.uint8, buf, at)
        self._pixels = np.ndarray((spec.slots, spec.slot_bytes), np.uint8, buf, at + _ERROR_BYTES)
        self._lock = spec.lock
        self._next = 0  # reader: the next position to read
        self._held: deque[int] = deque()  # reader: slots handed out and maybe still referenced, oldest first
        self._cursor = 0  # writer: where the search for a free slot starts

    @classmethod
    def create(cls, camera: str, slots: int, max_frame: tuple[int, int], ctx: Any = None) -> FrameRing:
        ctx = ctx or mp.get_context("spawn")
        lock, room = ctx.Lock(), ctx.Semaphore(0)
        probe = RingSpec("", camera, slots, max_frame, lock, room)
        shm = shared_memory.SharedMemory(create=True, size=probe.size)
        spec = RingSpec(shm.name, camera, slots, max_frame, lock, room)
        ring = cls(spec, shm)
        ring._ctrl[:] = 0
        ring._floats[:] = math.nan
        ring._error[:] = 0
        ring._slot_of[:] = 0
        ring._held_flags[:] = 0
        return ring

    # -- the writer (decode worker) -----------------------------------------------------------------
    def write(self, frame: Frame, segment: int, *, lossless: bool, stop: Any = None) -> bool:
        """Copy ``frame`` into the next slot (``segment`` replaces the frame's: a restarted worker
        starts a new one). False when it was dropped: no free slot (live), a frame larger than a
        slot, or ``stop`` set while waiting for room (lossless)."""
        h, w = frame.pixels.shape[:2]
        mw, mh = self.spec.max_frame
        if h * w > mw * mh:
            with self._lock:
                self._ctrl[_TOO_LARGE] += 1
            return False
        while True:
            with self._lock:
                pos, slot = int(self._ctrl[_WRITTEN]), self._free_slot()
                if slot is None and not lossless:
                    self._ctrl[_RING_FULL] += 1
                    return False
                self._ctrl[_WAITING] = int(slot is None)  # the reader's next release wakes us
            if slot is not None:
                break
            if stop is not None and stop.is_set():
                return False
            self.spec.room.acquire(timeout=0.1)  # a file waits for the reader: every frame goes through
        n = h * w * 3  # the slot is neither unread nor held: the reader does not touch it
        self._pixels[slot, :n] = frame.pixels.reshape(-1)
        self._meta[slot] = (frame.index, segment, h, w, math.nan if frame.pts is None else frame.pts,
                            frame.captured_at, frame.generation)
        with self._lock:
            self._slot_of[pos % self.spec.slots] = slot
            self._ctrl[_WRITTEN] = pos + 1
        self._cursor = slot + 1
        return True

    def _free_slot(self) -> int | None:
        """(Writer, under the lock.) A slot no unread frame and no held frame uses, or None."""
        slots, written, nxt = self.spec.slots, int(self._ctrl[_WRITTEN]), int(self._ctrl[_NEXT])
        if written - nxt >= slots:
            return None
        busy = self._held_flags.astype(bool)
        for p in range(nxt, written):
            busy[self._slot_of[p % slots]] = True
        for k in range(slots):
            slot = (self._cursor + k) % slots
            if not busy[slot]:
                return slot
        return None

    def end(self) -> None:
        """No more frames (the source ended, ``max_frames``, or the camera failed)."""
        with self._lock:
            self._ctrl[_ENDED] = 1

    def restart(self, ctx: Any = None) -> RingSpec:
        """(Owner.) A new worker takes over the camera: frames come again. A new lock, since a
        killed worker may have died holding the old one; returns the spec to hand the worker."""
        ctx = ctx or mp.get_context("spawn")
        self._lock = ctx.Lock()
        self.spec = dataclasses.replace(self.spec, lock=self._lock, room=ctx.Semaphore(0))
        self._ctrl[_ENDED] = 0
        self._ctrl[_CONNECTED] = 0
        return self.spec

    def report(self, *, decoded: int, dropped: int, reconnects: int, decode_errors: int, connected: bool,
               timeouts: int, state: str, fps: float | None, last_frame_at: float | None) -> None:
        """The worker's source counters (single words: no lock needed to publish them)."""
        c = self._ctrl
        c[_DECODED], c[_SRC_DROPPED], c[_RECONNECTS], c[_DECODE_ERRORS] = decoded, dropped, reconnects, decode_errors
        c[_CONNECTED], c[_TIMEOUTS], c[_STATE] = int(connected), timeouts, STATES.index(state)
        self._floats[_FPS] = math.nan if fps is None else fps
        self._floats[_LAST_AT] = math.nan if last_frame_at is None else last_frame_at

    def fail(self, message: str) -> None:
        """The camera stopped for good: keep why, for the inference process to report."""
        data = message.encode("utf-8", "replace")[: _ERROR_BYTES - 1]
        self._error[:] = 0
        self._error[: len(data)] = np.frombuffer(data, np.uint8)

    @property
    def error(self) -> str | None:
        data = self._error.tobytes().rstrip(b"\0")
        return data.decode("utf-8", "replace") if data else None

    @property
    def written(self) -> int:
        return int(self._ctrl[_WRITTEN])

    @property
    def writer_done(self) -> bool:
        """The writer said it has no more frames."""
        return bool(self._ctrl[_ENDED])

    # -- the reader (inference lanes) --------------------------------------------------------------
    def pending(self) -> int:
        """Frames written and not yet read (a racy read: a hint for the scheduler)."""
        return int(self._ctrl[_WRITTEN]) - self._next

    @property
    def ended(self) -> bool:
        """The writer is done and every frame was read."""
        with self._locked() as ok:
            return ok and bool(self._ctrl[_ENDED]) and int(self._ctrl[_WRITTEN]) == self._next

    def take(self, newest: bool) -> Frame | None:
        """The next unread frame (``newest``: the newest one, the older unread ones counted as
        skipped), or None when there is none. Its pixels are a view of the slot, valid until
        :meth:`release` lets the writer reuse it."""
        with self._locked() as ok:
            written = int(self._ctrl[_WRITTEN])
            if not ok or written == self._next:
                return None
            if newest and written - self._next > 1:  # the older unread frames' slots become free
                self._ctrl[_SKIPPED] += written - 1 - self._next
                self._next = written - 1
            slot = int(self._slot_of[self._next % self.spec.slots])
            self._held_flags[slot] = 1
            self._next += 1
            self._ctrl[_NEXT] = self._next
            self._ctrl[_TAKEN] += 1
        index, segment, h, w, pts, at, gen = self._meta[slot]
        hi, wi = int(h), int(w)
        pixels = self._pixels[slot, : hi * wi * 3].reshape(hi, wi, 3)
        self._held.append(slot)
        return Frame(pixels, int(index), None if math.isnan(pts) else float(pts), float(at), self.spec.camera,
                     int(segment), int(gen))

    def release(self, keep: int) -> None:
        """Let the writer reuse every slot but those of the last ``keep`` frames taken (a temporal
        window still refers to them) and the unread ones."""
        if len(self._held) <= keep:
            return
        wake = False
        with self._locked() as ok:
            if not ok:
                return
            while len(self._held) > keep:
                self._held_flags[self._held.popleft()] = 0
            wake = bool(self._ctrl[_WAITING])
            self._ctrl[_WAITING] = 0
        if wake:
            self.spec.room.release()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[bool]:
        """(Reader.) The lock, or False after a moment: a writer killed while holding it must not
        hang the inference lanes (the owner hands the next worker a new lock)."""
        lock = self._lock
        ok = lock.acquire(timeout=0.2)
        try:
            yield ok
        finally:
            if ok:
                lock.release()

    def release_all(self) -> None:
        self.release(0)

    def source_view(self) -> SourceView:
        c, f = self._ctrl, self._floats
        return SourceView(int(c[_DECODED]), int(c[_SRC_DROPPED]), int(c[_RECONNECTS]), int(c[_DECODE_ERRORS]),
                          bool(c[_CONNECTED]), int(c[_TIMEOUTS]), STATES[int(c[_STATE])],
                          None if math.isnan(f[_FPS]) else float(f[_FPS]),
                          None if math.isnan(f[_LAST_AT]) else float(f[_LAST_AT]))

    @property
    def skipped(self) -> int:
        """Frames the reader passed over for a newer one (newest wins)."""
        return int(self._ctrl[_SKIPPED])

    @property
    def ring_full(self) -> int:
        """Frames the writer dropped because no slot was free."""
        return int(self._ctrl[_RING_FULL])

    @property
    def too_large(self) -> int:
        return int(self._ctrl[_TOO_LARGE])

    def close(self) -> None:
        """Detach (the owner also frees the block). Frames still referring to slots must be gone."""
        # the counters stay readable after the close (a final status line, a test), as private copies
        self._ctrl, self._floats, self._error = self._ctrl.copy(), self._floats.copy(), self._error.copy()
        self._lock = threading.Lock()  # nothing to order against any more
        for name in ("_meta", "_pixels", "_slot_of", "_held_flags"):
            setattr(self, name, None)
        self._held.clear()
        if self._owner:  # the name goes now; the memory when the last mapping does
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
        try:
            self._shm.close()
        except BufferError:  # a frame view still alive somewhere: unmapped when the process exits
            pass
