"""A window and its result through shared memory between two processes of one host (Ray's path).

A camera process owns one block (:class:`WindowExchange`). For each request it copies the window
into the block (uint8 RGB, then the float32 noise maps), sends the small :class:`ShmWindow` that
names the block and the arrays' shapes instead of the arrays, and reads back the uint8 result the
inference process wrote into the same block (:class:`AttachedWindows`). Nothing goes through an
object store or a pickle. A process on another host (another ``node``) cannot see the block: it
answers that it did not read it and the camera sends the arrays themselves.

The block grows (a new one under a new name) when a larger window comes; the reader keeps a
bounded number of attachments (least recently used first out), so neither side grows without bound.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np

_ALIGN = 64
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


class WindowExchange:
    """The camera's side: ``ref = ex.put(wire, out_shape)``, send ``ref``, then ``ex.result(ref)``."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._shm: shared_memory.SharedMemory | None = None

    def put(self, wire: Wire, out: tuple[int, ...]) -> ShmWindow:
        rgb, maps = (wire, None) if isinstance(wire, np.ndarray) else wire
        probe = ShmWindow(self.node, "", rgb.shape, None if maps is None else maps.shape, out)
        if self._shm is None or self._shm.size < probe.size:
            self._drop()
            self._shm = shared_memory.SharedMemory(create=True, size=probe.size)
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
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None

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
            try:
                shm = shared_memory.SharedMemory(name=name)
            except (FileNotFoundError, ValueError, OSError):
                return None
            # Python < 3.13 registers an attached block with this process's resource tracker, which
            # would unlink the camera's block when this process dies; the camera owns it
            try:
                resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 -- nothing registered (3.13+ with track=False semantics)
                pass
            self._open[name] = shm
            while len(self._open) > self.capacity:
                _, old = self._open.popitem(last=False)
                _close(old)
            return shm

    def read(self, ref: ShmWindow) -> Wire | None:
        if ref.node != self.node:
            return None
        shm = self._block(ref.name)
        if shm is None or shm.size < ref.size:
            return None
        return _views(shm, ref)[0]

    def write(self, ref: ShmWindow, y: np.ndarray) -> None:
        shm = self._block(ref.name)
        assert shm is not None, "write follows a successful read"
        _views(shm, ref)[1][...] = y

    def __len__(self) -> int:
        return len(self._open)

    def close(self) -> None:
        with self._lock:
            for shm in self._open.values():
                _close(shm)
            self._open.clear()


def _close(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.close()
    except BufferError:  # a view still alive: unmapped when the process exits
        pass
