import numpy as np
import pytest

from stream_denoise.buffer import TemporalBuffer, reflect_indices
from stream_denoise.frame import Frame


def frame(i: int, segment: int = 0, shape=(4, 6, 3)) -> Frame:
    return Frame(np.full(shape, i % 256, np.uint8), i, i / 25, 0.0, "cam", segment)


def drain(buf: TemporalBuffer, frames) -> list[tuple[int, list[int]]]:
    out = []
    for f in frames:
        out += [(o.index, [w.index for w in win]) for o, win in buf.push(f)]
    return out


@pytest.mark.parametrize("length", [1, 2, 3, 5, 9])
@pytest.mark.parametrize("target", [0, 2, 4])
def test_reflect_never_repeats_the_output_frame_when_another_exists(length, target):
    for t in range(length):
        idx = reflect_indices(t, 5, target, length)
        assert len(idx) == 5 and idx[target] == t and all(0 <= i < length for i in idx)
        if length > 1:
            assert [j for j, i in enumerate(idx) if i == t] == [target]


def test_centered_window_order_latency_and_flush():
    buf = TemporalBuffer(5, 2)
    out = drain(buf, [frame(i) for i in range(6)])
    assert [o for o, _ in out] == [0, 1, 2, 3]  # two frames of look-ahead pending
    assert out[2] == (2, [0, 1, 2, 3, 4])
    assert out[0] == (0, [2, 1, 0, 1, 2])
    tail = [(o.index, [w.index for w in win]) for o, win in buf.flush()]
    assert tail == [(4, [2, 3, 4, 5, 2]), (5, [3, 4, 5, 4, 3])]


def test_causal_window_emits_immediately():
    buf = TemporalBuffer(5, 4)
    out = drain(buf, [frame(i) for i in range(6)])
    assert [o for o, _ in out] == list(range(6))
    assert out[5][1] == [1, 2, 3, 4, 5]
    assert buf.flush() == []


def test_new_segment_flushes_and_resets():
    buf = TemporalBuffer(5, 2)
    out = drain(buf, [frame(i) for i in range(4)] + [frame(10, segment=1)])
    assert [o for o, _ in out] == [0, 1, 2, 3]  # 2 and 3 flushed by the reconnect, none mixes segments
    assert all(i < 10 for _, win in out for i in win)
    assert buf.resets == 1
    assert [(o.index, [w.index for w in win]) for o, win in buf.flush()] == [(10, [10] * 5)]


def test_resolution_change_resets_without_mixing_sizes():
    buf = TemporalBuffer(5, 2)
    frames = [frame(i) for i in range(3)] + [frame(i, shape=(8, 8, 3)) for i in range(3, 6)]
    out = []
    for f in frames:
        for o, win in buf.push(f):
            assert {w.pixels.shape for w in win} == {o.pixels.shape}
            out.append(o.index)
    out += [o.index for o, _ in buf.flush()]
    assert out == list(range(6))


def test_dropped_frames_do_not_reset():
    buf = TemporalBuffer(5, 2)
    out = drain(buf, [frame(i) for i in (0, 1, 2, 5, 6, 7)])
    assert buf.resets == 0
    assert (5, [1, 2, 5, 6, 7]) in out
