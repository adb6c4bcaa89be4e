"""Windows and results through shared memory between two real processes (the Ray replicas' path).

The reader runs in its own interpreter (as a Ray replica does: not a multiprocessing child sharing
this process's resource tracker), connected by a multiprocessing connection.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from multiprocessing import shared_memory
from multiprocessing.connection import Client, Listener
from pathlib import Path

import numpy as np
import pytest

from stream_denoise.fleet.exchange import AttachedWindows, ShmWindow, WindowExchange


ROOT = Path(__file__).resolve().parents[2]
KEY = b"exchange-test"


def serve(address: str, node: str) -> None:
    """The reader process: answers each ShmWindow with (read?, sum of the window, blocks attached)
    and writes its first three RGB planes + 1 as the result."""
    conn = Client(address, authkey=KEY)
    att = AttachedWindows(node, capacity=2)
    while (ref := conn.recv()) is not None:
        w = att.read(ref)
        if w is None:
            conn.send((False, 0.0, len(att)))
            continue
        rgb, maps = (w, None) if isinstance(w, np.ndarray) else w
        att.write(ref, rgb.reshape(ref.rgb[0], -1, *ref.rgb[-2:])[:, :3] + 1)
        conn.send((True, float(rgb.sum()) + (float(maps.sum()) if maps is not None else 0.0), len(att)))
    att.close()


@pytest.fixture
def reader(tmp_path):
    address = str(tmp_path / "reader.sock")
    with Listener(address, authkey=KEY) as listener:
        code = f"from tests.unit.test_fleet_exchange import serve; serve({address!r}, 'node-a')"
        p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        here = listener.accept()

    def ask(ref):
        here.send(ref)
        assert here.poll(30), "the reader process did not answer"
        return here.recv()

    yield ask, p
    try:
        here.send(None)
    except OSError:  # the test killed it
        pass
    p.wait(10)
    here.close()


def test_window_and_result_cross_processes_through_the_block(reader):
    ask, _ = reader
    ex = WindowExchange("node-a")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 250, (2, 5, 3, 8, 12), dtype=np.uint8)
    maps = rng.random((2, 5, 2, 8, 12), dtype=np.float32)
    ref = ex.put((rgb, maps), (2, 3, 8, 12))
    assert isinstance(ref, ShmWindow) and ref.size >= rgb.nbytes + maps.nbytes + 2 * 3 * 8 * 12
    ok, total, _ = ask(ref)
    assert ok and total == pytest.approx(float(rgb.sum()) + float(maps.sum(dtype=np.float64)), rel=1e-6)
    assert np.array_equal(ex.result(ref), rgb[:, 0] + 1)  # the result the other process wrote
    # a plain uint8 window (a network without noise maps) in the same block
    plain = rng.integers(0, 250, (1, 15, 8, 12), dtype=np.uint8)
    ref2 = ex.put(plain, (1, 3, 8, 12))
    assert ref2.name == ref.name  # it fits: the block is reused
    ok, total, _ = ask(ref2)
    assert ok and total == float(plain.sum()) and np.array_equal(ex.result(ref2), plain[:, :3] + 1)
    ex.close()


def test_another_host_is_answered_not_read_and_blocks_stay_bounded(reader):
    ask, _ = reader
    ex = WindowExchange("node-b")  # the reader is on node-a: it must not read (it could not, across hosts)
    ref = ex.put(np.zeros((1, 15, 4, 4), np.uint8), (1, 3, 4, 4))
    assert ask(ref) == (False, 0.0, 0)
    ex.close()
    names = []
    for i in range(4):  # four cameras' blocks through a reader that keeps two attachments
        e = WindowExchange("node-a")
        r = e.put(np.full((1, 15, 4, 4), i, np.uint8), (1, 3, 4, 4))
        ok, total, attached = ask(r)
        assert ok and total == 15 * 16 * i and attached <= 2
        names.append(r.name)
        e.close()
    last = WindowExchange("node-a")  # on the reader's node, but its block unlinked since: not read
    gone = last.put(np.zeros((1, 15, 4, 4), np.uint8), (1, 3, 4, 4))
    last.close()
    assert ask(gone) == (False, 0.0, 0)  # and the reader let go of the four freed blocks it held


def test_a_larger_window_gets_a_new_block_and_the_old_one_is_freed(reader):
    ask, _ = reader
    ex = WindowExchange("node-a")
    small = ex.put(np.ones((1, 15, 4, 4), np.uint8), (1, 3, 4, 4))
    assert ask(small)[0]
    big = ex.put(np.ones((1, 15, 64, 64), np.uint8), (1, 3, 64, 64))
    assert big.name != small.name
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=small.name)  # unlinked by its owner
    ok, total, attached = ask(big)
    assert ok and total == 15 * 64 * 64 and np.array_equal(ex.result(big), np.full((1, 3, 64, 64), 2, np.uint8))
    assert attached == 1  # the reader let go of the small block when its owner freed it
    again = ex.put(np.ones((1, 15, 64, 64), np.uint8), (1, 3, 64, 64), fresh=True)  # a resend: a new block
    assert again.name != big.name and ask(again)[0]
    ex.close()


def test_no_room_in_shared_memory_means_arrays_not_a_crash(caplog):
    ex = WindowExchange("node-a")
    huge = np.broadcast_to(np.uint8(0), (1, 15, 200_000, 200_000))  # 600 GB, without the memory
    assert ex.put(huge, (1, 3, 200_000, 200_000)) is None
    assert ex.put(huge, (1, 3, 200_000, 200_000)) is None
    assert sum("no room" in r.getMessage() for r in caplog.records) == 1  # said once
    ex.close()


def test_a_dead_reader_does_not_unlink_the_cameras_block(reader):
    ask, proc = reader
    ex = WindowExchange("node-a")
    ref = ex.put(np.ones((1, 15, 4, 4), np.uint8), (1, 3, 4, 4))
    assert ask(ref)[0]
    proc.kill()  # its resource tracker must not take the camera's block with it
    proc.wait(10)
    time.sleep(1.5)  # the tracker unlinks what it holds within a moment of its process's death
    shm = shared_memory.SharedMemory(name=ref.name)  # still there for the next replica
    shm.close()
    ex.close()
