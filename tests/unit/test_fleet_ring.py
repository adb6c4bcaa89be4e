"""The shared-memory frame ring of the multi-process runtime: real shared memory, real processes."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import numpy as np
import pytest

from stream_denoise.fleet.ring import FrameRing, RingSpec
from stream_denoise.frame import Frame


def frame(i: int, h: int = 16, w: int = 24, pts: float | None = None, segment: int = 0) -> Frame:
    pixels = np.full((h, w, 3), i % 256, np.uint8)
    pixels[0, 0] = (i // 256, 7, 9)
    return Frame(pixels, i, pts, 1000.0 + i, "cam", segment)


@pytest.fixture
def ring():
    r = FrameRing.create("cam", slots=4, max_frame=(32, 16))
    yield r
    r.close()


def test_frames_come_out_as_they_went_in(ring):
    assert ring.take(newest=False) is None
    assert ring.write(frame(3, pts=0.12, segment=2), segment=5, lossless=False)
    assert ring.write(frame(4, h=8, w=8), segment=5, lossless=False)
    a, b = ring.take(newest=False), ring.take(newest=False)
    assert (a.index, a.pts, a.captured_at, a.segment, a.source) == (3, 0.12, 1003.0, 5, "cam")
    assert a.pixels.shape == (16, 24, 3) and (a.pixels[1:] == 3).all() and tuple(a.pixels[0, 0]) == (0, 7, 9)
    assert b.pts is None and b.pixels.shape == (8, 8, 3) and (b.pixels[1:] == 4).all()
    assert ring.take(newest=False) is None


def test_live_reader_takes_the_newest_and_counts_the_rest(ring):
    for i in range(3):
        assert ring.write(frame(i), 0, lossless=False)
    got = ring.take(newest=True)
    assert got.index == 2 and ring.skipped == 2
    assert ring.take(newest=True) is None


def test_a_full_ring_drops_new_live_frames_and_counts_them(ring):
    for i in range(4):
        assert ring.write(frame(i), 0, lossless=False)
    assert not ring.write(frame(4), 0, lossless=False)
    assert ring.ring_full == 1
    held = [ring.take(newest=False) for _ in range(4)]
    ring.release(keep=2)  # a window still refers to the last two: two slots free
    assert ring.write(frame(5), 0, lossless=False) and ring.write(frame(6), 0, lossless=False)
    assert not ring.write(frame(7), 0, lossless=False)
    assert (held[2].pixels[1:] == 2).all() and (held[3].pixels[1:] == 3).all()  # kept slots untouched


def test_a_live_reader_that_is_behind_never_stalls_the_ring(ring):
    """Frames passed over free their slots at once; the window's frames stay put however far
    apart they were taken (with a plain released-up-to counter this stalled for good)."""
    taken, i = [], 0
    for _ in range(60):
        for _ in range(3):  # the camera delivers three frames per frame the lanes manage
            ring.write(frame(i), 0, lossless=False)
            i += 1
        got = ring.take(newest=True)
        assert got is not None, f"stalled after {len(taken)} frames"
        taken.append(got)
        ring.release(keep=2)  # the temporal window still reads the last two taken
        assert (taken[-2].pixels[1:] == taken[-2].index % 256).all() if len(taken) > 1 else True
    assert [f.index for f in taken] == sorted({f.index for f in taken})
    assert taken[-1].index >= 150 and ring.skipped + ring.ring_full + len(taken) == i


def test_a_file_writer_waits_for_room_and_loses_nothing(ring):
    got: list[int] = []

    def read() -> None:
        while len(got) < 20:
            f = ring.take(newest=False)
            if f is None:
                time.sleep(0.001)
                continue
            got.append(f.index)
            ring.release(keep=1)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(20):
        assert ring.write(frame(i), 0, lossless=True)
    reader.join(10)
    assert got == list(range(20)) and ring.ring_full == 0


def test_a_waiting_file_writer_gives_up_when_stopped(ring):
    for i in range(4):
        ring.write(frame(i), 0, lossless=True)
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    t0 = time.monotonic()
    assert not ring.write(frame(4), 0, lossless=True, stop=stop)
    assert time.monotonic() - t0 < 2


def test_a_frame_larger_than_a_slot_is_dropped_and_counted(ring):
    assert not ring.write(frame(0, h=64, w=64), 0, lossless=True)
    assert ring.too_large == 1 and ring.take(newest=False) is None


def test_end_error_and_counters_reach_the_reader(ring):
    ring.write(frame(0), 0, lossless=False)
    ring.report(decoded=9, dropped=2, reconnects=1, decode_errors=3, connected=True, timeouts=4, state="running",
                fps=25.0, last_frame_at=5.0)
    ring.fail("SourceError: gone")
    ring.end()
    v = ring.source_view()
    assert (v.frames_decoded, v.frames_dropped, v.reconnects, v.decode_errors, v.connected, v.state, v.fps) == \
        (9, 2, 1, 3, True, "running", 25.0)
    assert ring.error == "SourceError: gone"
    assert ring.writer_done and not ring.ended  # one frame still unread
    ring.take(newest=False)
    assert ring.ended


def test_a_writer_that_died_holding_the_lock_hangs_nobody(ring):
    ring.write(frame(0), 0, lossless=False)
    ring.spec.lock.acquire()  # as a worker killed inside the lock would leave it
    t0 = time.monotonic()
    assert ring.take(newest=False) is None  # gives up after a moment instead of hanging
    assert time.monotonic() - t0 < 1
    spec = ring.restart()  # what the supervisor does before starting the next worker
    assert spec.lock is not None and ring.take(newest=False).index == 0


def _write_in_child(spec: RingSpec, n: int) -> None:
    ring = FrameRing(spec)
    for i in range(n):
        ring.write(frame(i), 0, lossless=True)
    ring.end()
    ring.close()


def test_frames_cross_processes_in_order():
    ctx = mp.get_context("spawn")
    ring = FrameRing.create("cam", slots=6, max_frame=(32, 16), ctx=ctx)
    try:
        p = ctx.Process(target=_write_in_child, args=(ring.spec, 200))
        p.start()
        got: list[int] = []
        deadline = time.monotonic() + 30
        while not ring.ended and time.monotonic() < deadline:
            f = ring.take(newest=False)
            if f is None:
                time.sleep(0.001)
                continue
            assert (f.pixels[1:] == f.index % 256).all()
            got.append(f.index)
            ring.release(keep=2)
        p.join(10)
        assert p.exitcode == 0 and got == list(range(200))
    finally:
        ring.close()
