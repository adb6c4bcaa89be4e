"""The live PyAV source against a real RTSP server (gst-rtsp-server looping a generated clip)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from stream_denoise.config import SourceConfig
from stream_denoise.errors import SourceError, SourceTimeout
from stream_denoise.frame import Frame
from stream_denoise.sources import ThreadedSource, open_source
from tests.waiting import wait_until

# Short timeouts and backoff keep every failure path to a few seconds.
FAST: dict[str, Any] = dict(open_timeout_s=2, read_timeout_s=1, backoff_initial_s=0.2, backoff_max_s=1)


def live(url: str, **kw: Any) -> ThreadedSource:
    src = open_source(SourceConfig(uri=url, **{**FAST, **kw}))
    assert isinstance(src, ThreadedSource)
    return src


def read_until(src: ThreadedSource, ok: Any, within_s: float) -> Frame:
    """The first frame satisfying ``ok`` within ``within_s`` seconds (read timeouts are retried)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            f = src.read(timeout=0.5)
        except SourceTimeout:
            continue
        assert f is not None, "source ended"
        if ok(f):
            return f
    pytest.fail(f"no matching frame within {within_s} s; stats={src.stats}")


def test_rtsp_frames_received(rtsp_server: Any) -> None:
    with live(rtsp_server.url) as src:
        frames = [f for _, f in zip(range(30), src)]
        assert src.stats.connected and src.live
    assert all(f.pixels.shape == (96, 160, 3) and f.pixels.flags.c_contiguous for f in frames)
    assert all(f.pts is not None for f in frames)
    idx = [f.index for f in frames]
    assert idx == sorted(set(idx))
    pts = [f.pts for f in frames]
    assert pts == sorted(pts)  # type: ignore[type-var]
    assert {f.segment for f in frames} == {0} and frames[0].source == rtsp_server.url


def test_unreachable_server_fails_at_open(rtsp_server: Any) -> None:
    url = rtsp_server.url
    rtsp_server.kill()
    with pytest.raises(SourceError, match="cannot open"):
        open_source(SourceConfig(uri=url, **FAST))


def test_slow_consumer_drops_and_stays_live(rtsp_server: Any) -> None:
    with live(rtsp_server.url) as src:
        first = read_until(src, lambda f: True, 10)
        got = [first]
        for _ in range(5):
            time.sleep(0.4)  # far slower than 30 fps
            f = src.read()
            assert f is not None
            got.append(f)
            assert time.time() - f.captured_at < 1.0  # the newest frame, not one queued seconds ago
        stats = src.stats
    assert stats.frames_dropped > 10
    assert got[-1].index - got[0].index > 2 * len(got)  # gaps = drops
    # the stream clock advanced with the wall clock: the consumer did not fall behind
    assert got[-1].pts - got[0].pts == pytest.approx(got[-1].captured_at - got[0].captured_at, abs=0.5)  # type: ignore[operator]


def test_server_killed_then_restarted_reconnects(rtsp_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stream_denoise.sources")
    with live(rtsp_server.url) as src:
        before = read_until(src, lambda f: True, 10)
        rtsp_server.kill()
        assert wait_until(lambda: not src.stats.connected, 10)  # the drop is seen, the pre-drop frame flushed
        with pytest.raises(SourceTimeout):
            src.read(timeout=0.5)  # nothing stale, nothing new while the camera is gone
        rtsp_server.start()
        after = read_until(src, lambda f: True, 15)
        stats = src.stats
    assert after.segment > before.segment and after.index > before.index
    assert stats.reconnects >= 1
    assert any("reconnecting" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_stalled_server_times_out_and_recovers(rtsp_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stream_denoise.sources")
    with live(rtsp_server.url) as src:
        before = read_until(src, lambda f: True, 10)
        n0 = len(caplog.records)
        rtsp_server.stall()
        assert wait_until(lambda: any("stalled" in r.getMessage() for r in caplog.records[n0:]), 10), "no read timeout"
        with pytest.raises(SourceTimeout):
            src.read(timeout=0.5)
        with pytest.raises(SourceTimeout):  # a new connection to the frozen server times out at open
            open_source(SourceConfig(uri=rtsp_server.url, **{**FAST, "open_timeout_s": 1}))
        rtsp_server.resume()
        after = read_until(src, lambda f: f.segment > before.segment, 20)
        assert src.stats.reconnects >= 1 and after.index > before.index


def test_stall_without_reconnect_raises(rtsp_server: Any) -> None:
    with live(rtsp_server.url, reconnect=False) as src:
        read_until(src, lambda f: True, 10)
        rtsp_server.stall()
        with pytest.raises(SourceTimeout, match="stalled"):
            for _ in src:  # iteration ends with the reader's error, within the read timeout (x2)
                pass


def test_close_while_stalled_does_not_hang(rtsp_server: Any) -> None:
    baseline = threading.active_count()
    src = live(rtsp_server.url)
    read_until(src, lambda f: True, 10)
    frames: list[Frame] = []
    consumer = threading.Thread(target=lambda: frames.extend(src))  # blocks: waits through reconnects
    consumer.start()
    rtsp_server.stall()
    time.sleep(1.5)
    src.close()
    consumer.join(10)
    assert not consumer.is_alive()
    assert threading.active_count() == baseline


def test_five_stalls_in_a_row_each_recover_within_two_seconds(rtsp_server: Any) -> None:
    """The reconnect backoff starts afresh after every connection that delivered frames, so the fifth
    stall recovers as fast as the first (it used to keep doubling across stalls: 0.5, 1, 2, 4, 8 s)."""
    recoveries: list[float] = []
    with live(rtsp_server.url, open_timeout_s=2, read_timeout_s=1, backoff_initial_s=0.5, backoff_max_s=10) as src:
        last = read_until(src, lambda f: True, 10)
        for _ in range(5):
            rtsp_server.stall()
            assert wait_until(lambda: not src.stats.connected, 10), "the stall was not seen"
            time.sleep(1.0)  # frozen a while after the drop: the reader is in its backoff or a blocked open
            rtsp_server.resume()
            back = time.time()
            last = read_until(src, lambda f, seg=last.segment: f.segment > seg, 20)
            recoveries.append(last.captured_at - back)
    print("recovered after", [round(r, 2) for r in recoveries], "s")
    assert max(recoveries) < 2.0, recoveries
