"""A window and its result through shared memory between two processes of one host (Ray's path).

A camera process owns one block (:class:`WindowExchange`). For each request it copies the window
into the block (uint8 RGB, then the float32 noise maps), sends the small :class:`ShmWindow` that
names the block and the arrays' shapes instead of the arrays, and reads back the uint8 result the
inference process wrote into the same block (:class:`AttachedWindows`). Nothing goes through an
object store or a pickle. A process on another host (another ``node``) cannot see the block: it
answers that it did not read it and the camera sends the arrays themselves.

The block grows (a new one under a new name) when a larger window comes. The reader keeps a
bounded number of attachments (least recently used first out) and lets go of those whose block
its owner has freed, so neither side grows without bound. A camera whose /dev/shm has no room for
its block sends arrays instead (one log line), rather than dying of SIGBUS on the first write.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np

log = logging.getLogger(__name__)
_ALIGN = 64
_SHM_DIR = "/dev/shm"  # where POSIX shared memory lives on Linux (a container may give it 64 MB)
Wire = np.ndarray | tuple[np.ndarray, np.ndarray]  # uint8 RGB windows, or (RGB, float32 noise maps)


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


@dataclass(frozen=True)
class ShmWindow:
    """What travels instead of a window: where it lies and its shapes (picklable, ~200 bytes)."""

    node: str  # the host's id (Ray's node id): only a process on it can read the block
    name: str  # the shared-memory block
    rgb: tuple[int, ...]  # uint8 (N, K, 3, H, W) or (N, 3K, H, W), at offset 0
    maps: tuple[int, ...] | None  # float32 (N, K, P, H, W), after the RGB
    out: tuple[int, ...]  # the uint8 result (N, 3, H, W), after the maps

    @property
    def maps_at(self) -> int:
        return _aligned(math.prod(self.rgb))

    @property
    def out_at(self) -> int:
        return self.maps_at + (_aligned(4 * math.prod(self.maps)) if self.maps else 0)

    @property
    def size(self) -> int:
        return self.out_at + math.prod(self.out)


def _views(shm: shared_memory.SharedMemory, ref: ShmWindow) -> tuple[Wire, np.ndarray]:
    buf = shm.buf
    rgb = np.ndarray(ref.rgb, np.uint8, buf, 0)
    wire: Wire = rgb if ref.maps is None else (rgb, np.ndarray(ref.maps, np.float32, buf, ref.maps_at))
    return wire, np.ndarray(ref.out, np.uint8, buf, ref.out_at)


def _room(size: int) -> bool:
    try:
        st = os.statvfs(_SHM_DIR)
    except OSError:
        return True  # not Linux's /dev/shm: let the system say
    return st.f_bavail * st.f_frsize >= size


class WindowExchange:
    """The camera's side: ``ref = ex.put(wire, out_shape)``, send ``ref``, then ``ex.result(ref)``."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._shm: shared_memory.SharedMemory | None = None
        self._no_room_logged = False

    def put(self, wire: Wire, out: tuple[int, ...], fresh: bool = False) -> ShmWindow | None:
        """Copy ``wire`` into the block; None when shared memory has no room for it (send arrays).
        ``fresh``: into a new block (a retry: whoever had the old one may still write into it)."""
        rgb, maps = (wire, None) if isinstance(wire, np.ndarray) else wire
        probe = ShmWindow(self.node, "", rgb.shape, None if maps is None else maps.shape, out)
        if fresh or self._shm is None or self._shm.size < probe.size:
            self._drop()
            if not _room(probe.size):
                if not self._no_room_logged:
                    self._no_room_logged = True
                    log.warning("shared memory (%s) has no room for a %.1f MB window: this camera sends arrays "
                                "(give the container more: shm_size)", _SHM_DIR, probe.size / 1e6)
                return None
            try:
                self._shm = shared_memory.SharedMemory(create=True, size=probe.size)
            except OSError as exc:
                log.warning("no shared-memory block for this camera (%s): it sends arrays", exc)
                return None
        ref = ShmWindow(self.node, self._shm.name, probe.rgb, probe.maps, out)
        dst, _ = _views(self._shm, ref)
        if isinstance(dst, np.ndarray):
            dst[...] = rgb
        else:
            dst[0][...] = rgb
            dst[1][...] = maps
        return ref

    def result(self, ref: ShmWindow) -> np.ndarray:
        """A copy of the result the reader wrote (the block is reused by the next request)."""
        assert self._shm is not None and ref.name == self._shm.name
        return _views(self._shm, ref)[1].copy()

    def _drop(self) -> None:
        shm, self._shm = self._shm, None
        if shm is None:
            return
        try:
            shm.unlink()  # the name goes now (a replica lets go of it), the memory with the last mapping
        except FileNotFoundError:
            pass
        _close(shm)

    def close(self) -> None:
        self._drop()


class AttachedWindows:
    """The inference side: ``read(ref)`` -> the window (views of the block) or None when the block is
    not visible here; ``write(ref, y)`` puts the result where the camera reads it."""

    def __init__(self, node: str, capacity: int = 256) -> None:
        self.node, self.capacity = node, capacity
        self._open: OrderedDict[str, shared_memory.SharedMemory] = OrderedDict()
        self._lock = threading.Lock()

    def _block(self, name: str) -> shared_memory.SharedMemory | None:
        with self._lock:
            shm = self._open.get(name)
            if shm is not None:
                self._open.move_to_end(name)
                return shm
            self._let_go_of_freed()
            try:
                shm = _attach(name)
            except (FileNotFoundError, ValueError, OSError):
                return None
            self._open[name] = shm
            while len(self._open) > self.capacity:
                _, old = self._open.popitem(last=False)
                _close(old)
            return shm

    def _let_go_of_freed(self) -> None:
        """Close the attachments whose block its owner has unlinked (a camera that ended, or moved
        to a larger block): their memory goes when the last mapping does."""
        if not os.path.isdir(_SHM_DIR):
            return
        for name in [n for n in self._open if not os.path.exists(os.path.join(_SHM_DIR, n.lstrip("/")))]:
            _close(self._open.pop(name))

    def read(self, ref: ShmWindow) -> Wire | None:
        if ref.node != self.node:
            return None
        shm = self._block(ref.name)
        if shm is None or shm.size < ref.size:
            return None
        return _views(shm, ref)[0]

    def write(self, ref: ShmWindow, y: np.ndarray) -> bool:
        """Put the result in the block; False when it is no longer there (the camera sends arrays)."""
        shm = self._block(ref.name)
        if shm is None or shm.size < ref.size:
            return False
        _views(shm, ref)[1][...] = y
        return True

    def __len__(self) -> int:
        return len(self._open)

    def close(self) -> None:
        with self._lock:
            for shm in self._open.values():
                _close(shm)
            self._open.clear()


def _attach(name: str) -> shared_memory.SharedMemory:
    """Attach a block another process owns without handing it to this process's resource tracker
    (which would unlink the owner's block when this process dies)."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg,unused-ignore]
    register = resource_tracker.register
    resource_tracker.register = lambda *_a, **_k: None  # type: ignore[assignment]
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register  # type: ignore[assignment]


def _close(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.close()
    except BufferError:  # a view still alive: unmapped when the process exits
        pass
