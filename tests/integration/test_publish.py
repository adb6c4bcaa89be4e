"""Publisher/Subscriber over real ZeroMQ sockets (tcp:// and ipc://), CURVE, record and VideoWriter."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
import zmq

from stream_denoise.config import CurveConfig, Encoding, PublishConfig
from stream_denoise.errors import ConfigError, MessageError, PublishError, SourceTimeout
from stream_denoise.frame import Frame
from stream_denoise.publish import Publisher
from stream_denoise.sockets import keygen
from stream_denoise.subscribe import Received, Subscriber, record
from stream_denoise.video_writer import VideoWriter
from stream_denoise.wire import encode
from tests.waiting import wait_until

TCP = "tcp://127.0.0.1:*"  # the OS picks a free port; Publisher.endpoint tells which


def pixels(index: int, w: int = 33, h: int = 17) -> np.ndarray:
    return np.random.default_rng(index).integers(0, 256, (h, w, 3), dtype=np.uint8)


def frame(index: int, w: int = 33, h: int = 17, source: str = "cam") -> Frame:
    return Frame(pixels(index, w, h), index, index / 30, time.time(), source, segment=1)


def endpoint(kind: str, tmp_path: Path) -> str:
    return TCP if kind == "tcp" else f"ipc://{tmp_path}/pub.ipc"


def connect(pub: Publisher, *subs: Subscriber, source: str = "warmup") -> None:
    """Send until every subscriber got a frame (PUB/SUB drops everything before the subscription lands)."""
    waiting = list(subs)
    deadline = time.monotonic() + 10
    i = 0
    while waiting:
        assert time.monotonic() < deadline, "subscriber never connected"
        pub.send(frame(i, 8, 8, source=source))
        i += 1
        waiting = [s for s in waiting if s.recv(timeout=0.02) is None]


def drain(sub: Subscriber, quiet_s: float = 0.2) -> list[Received]:
    out = []
    while (m := sub.recv(timeout=quiet_s)) is not None:
        out.append(m)
    return out


@pytest.fixture
def pub_tcp() -> Iterator[Publisher]:
    with Publisher(PublishConfig(endpoint=TCP, sndhwm=1000)) as pub:
        yield pub


# -- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["raw", "png", "jpeg"])
@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_round_trip(kind: str, encoding: Encoding, tmp_path: Path) -> None:
    cfg = PublishConfig(endpoint=endpoint(kind, tmp_path), encoding=encoding, sndhwm=100, topic="cam-1")
    with Publisher(cfg) as pub, Subscriber(pub.endpoint, "cam-1", timeout_s=2) as sub:
        assert pub.endpoint.startswith(kind + "://")
        connect(pub, sub)
        sent = [frame(i) for i in range(100, 105)]
        for f in sent:
            assert pub.send(f)
        got = [sub.recv() for _ in sent]
    assert all(m is not None for m in got)
    seqs = [m.seq for m in got]  # type: ignore[union-attr]
    assert seqs == list(range(seqs[0], seqs[0] + 5))
    for f, m in zip(sent, got):
        assert m is not None
        header, image = m  # unpacks like a tuple
        assert m.topic == b"cam-1" and header["source"] == "cam" and header["index"] == f.index
        assert (header["width"], header["height"], header["encoding"], header["color"]) == (33, 17, encoding, "BGR")
        assert header["pts"] == pytest.approx(f.pts) and header["captured_at"] == pytest.approx(f.captured_at)
        assert header["segment"] == 1 and header["published_at"] >= header["captured_at"]
        bgr = cv2.cvtColor(f.pixels, cv2.COLOR_RGB2BGR)
        if encoding == "jpeg":
            assert image.shape == bgr.shape and image.dtype == np.uint8
        else:
            assert np.array_equal(image, bgr)
            assert np.array_equal(m.to_frame().pixels, f.pixels)
    assert sub.gaps == 0 and sub.rejected == 0 and pub.dropped == 0


def test_connect_mode_with_binding_subscriber(tmp_path: Path) -> None:
    with Subscriber(TCP, bind=True, timeout_s=2) as sub:
        with Publisher(PublishConfig(endpoint=sub.endpoint, bind=False)) as pub:
            connect(pub, sub)
            pub.send(frame(5))
            m = sub.recv()
    assert m is not None and np.array_equal(m.rgb(), pixels(5))


def test_iteration_stops_after_timeout(pub_tcp: Publisher) -> None:
    with Subscriber(pub_tcp.endpoint, timeout_s=0.3) as sub:
        connect(pub_tcp, sub)
        for i in range(3):
            pub_tcp.send(frame(i))
        assert [h["index"] for h, _ in sub] == [0, 1, 2]


# -- sequence numbers --------------------------------------------------------------------------

def test_gaps_are_detected_when_the_publisher_skips() -> None:
    ctx: zmq.Context[Any] = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Subscriber(f"tcp://127.0.0.1:{port}", timeout_s=2) as sub:
            i = 0
            while sub.recv(timeout=0.02) is None:  # warm up on another topic
                raw.send_multipart(encode(frame(0), i, topic=b"warmup"))
                i += 1
            base = dict(gaps=sub.gaps, missed=sub.missed)
            for seq in (0, 1, 2, 5, 6, 10):
                raw.send_multipart(encode(frame(seq), seq, topic=b"cam"))
            got = [sub.recv() for _ in range(6)]
            assert [m.seq for m in got if m] == [0, 1, 2, 5, 6, 10]
            assert (sub.gaps - base["gaps"], sub.missed - base["missed"]) == (2, 2 + 3)
            assert sub.last_seq == 10 and sub.resets == 0
            raw.send_multipart(encode(frame(0), 0, topic=b"cam"))  # publisher restarted
            assert sub.recv() is not None and sub.resets == 1 and sub.gaps - base["gaps"] == 2
    finally:
        raw.close(linger=0)


def test_seq_counts_per_topic(pub_tcp: Publisher) -> None:
    with Subscriber(pub_tcp.endpoint, "a", timeout_s=1) as sub:
        connect(pub_tcp, sub, source="a")
        first = sub.last_seq
        for i in range(10):
            pub_tcp.send(frame(i), topic="a")
            pub_tcp.send(frame(i), topic="b")  # not subscribed: must not look like a gap
        got = drain(sub)
    assert [m.seq for m in got] == [first + 1 + i for i in range(10)]  # type: ignore[operator]
    assert sub.gaps == 0 and {m.topic for m in got} == {b"a"}


# -- slow, latest-only and dead subscribers ----------------------------------------------------

def test_latest_only_gives_a_slow_consumer_the_newest_frame(pub_tcp: Publisher) -> None:
    with Subscriber(pub_tcp.endpoint, latest_only=True, timeout_s=2) as sub:
        connect(pub_tcp, sub)
        for _ in range(3):
            last = -1
            for i in range(50):  # a burst while the consumer is busy
                pub_tcp.send(frame(i, 64, 48))
                last = i
            time.sleep(0.3)  # the slow consumer
            got = drain(sub, quiet_s=0.3)
            assert got, "nothing received"
            assert got[-1].index == last
            assert len(got) <= 5, [m.index for m in got]  # not a backlog of 50 stale frames
            assert got[0].index >= last - 5
        assert sub.discarded >= 3 * 40
        assert sub.gaps == 0  # discarding on purpose is not loss


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def test_a_subscriber_that_never_reads_does_not_block_send() -> None:
    with Publisher(PublishConfig(endpoint=TCP, sndhwm=2)) as pub, \
            Subscriber(pub.endpoint, rcvhwm=2, timeout_s=2) as sub:
        connect(pub, sub)
        big = frame(1, 320, 240)  # 230 KB: 500 of them would be 115 MB if anything queued them
        before = _rss_mb()
        for _ in range(500):
            pub.send(big)
        grown = _rss_mb() - before
        assert pub.sent + pub.dropped >= 500
        assert grown < 60, f"RSS grew {grown:.0f} MB"
        got = drain(sub)  # it only ever holds a few messages
        assert len(got) < 100 and sub.missed > 0  # the rest was dropped, seen as gaps


def test_a_dead_subscriber_is_harmless(pub_tcp: Publisher) -> None:
    sub = Subscriber(pub_tcp.endpoint, timeout_s=2)
    connect(pub_tcp, sub)
    sub.close()
    sub.close()  # idempotent
    for i in range(100):
        pub_tcp.send(frame(i))
    with Subscriber(pub_tcp.endpoint, timeout_s=2) as again:
        connect(pub_tcp, again)
    assert pub_tcp.sent >= 101


def test_latest_only_subscriber_closes_cleanly(pub_tcp: Publisher) -> None:
    sub = Subscriber(pub_tcp.endpoint, latest_only=True, timeout_s=1)
    connect(pub_tcp, sub)
    sub.close()
    assert sub.recv(timeout=0.1) is None


# -- errors ------------------------------------------------------------------------------------

def test_port_in_use_is_a_publish_error(pub_tcp: Publisher) -> None:
    with pytest.raises(PublishError, match=f"cannot bind {pub_tcp.endpoint}"):
        Publisher(PublishConfig(endpoint=pub_tcp.endpoint))


@pytest.mark.parametrize("ep", ["tcp://256.0.0.1:5555", "tcp://no-such-interface-xyz:5555", "ipc:///nonexistent-dir/x/y.ipc"])
def test_bad_bind_endpoint_is_a_publish_error(ep: str) -> None:
    with pytest.raises(PublishError, match="cannot bind"):
        Publisher(PublishConfig(endpoint=ep))


def test_send_after_close_raises() -> None:
    pub = Publisher(PublishConfig(endpoint=TCP))
    pub.close()
    pub.close()
    with pytest.raises(PublishError):
        pub.send(frame(0))


def test_malformed_messages_are_skipped_or_raise_in_strict_mode() -> None:
    ctx: zmq.Context[Any] = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    good = encode(frame(3), 0, topic=b"cam")
    head = json.loads(bytes(good[1]))
    bad = [
        [b"cam", bytes(good[1])],  # two parts
        [b"cam", b"{nope", bytes(good[2])],  # not JSON
        [b"cam", json.dumps({**head, "width": 34}).encode(), bytes(good[2])],  # size lie
        [b"cam", json.dumps({**head, "width": 10**9}).encode(), b""],  # huge width
    ]
    try:
        with Subscriber(f"tcp://127.0.0.1:{port}", timeout_s=1) as sub, \
                Subscriber(f"tcp://127.0.0.1:{port}", timeout_s=1, strict=True) as strict, \
                Subscriber(f"tcp://127.0.0.1:{port}", timeout_s=1, strict=True, latest_only=True) as strict_latest:
            i = 0
            pending = [sub, strict, strict_latest]
            while pending:
                raw.send_multipart(encode(frame(0), i, topic=b"warmup"))
                i += 1
                pending = [s for s in pending if s.recv(timeout=0.02) is None]
            drain(sub, 0.1), drain(strict, 0.1), drain(strict_latest, 0.1)
            for parts in bad:
                raw.send_multipart(parts)
            raw.send_multipart(good)
            m = sub.recv()
            assert m is not None and m.index == 3 and sub.rejected == len(bad)
            with pytest.raises(MessageError, match="3 message parts"):
                strict.recv()
            time.sleep(0.2)
            with pytest.raises(MessageError):
                strict_latest.recv()
    finally:
        raw.close(linger=0)


# -- CURVE -------------------------------------------------------------------------------------

def test_curve_admits_only_allowed_clients(tmp_path: Path) -> None:
    server_pub, server_secret = keygen(tmp_path / "server", "server")
    client_pub, client_secret = keygen(tmp_path / "client", "client")
    _, intruder_secret = keygen(tmp_path / "intruder", "intruder")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(client_pub, allowed)
    assert server_secret.stat().st_mode & 0o077 == 0
    with pytest.raises(PublishError, match="already exists"):
        keygen(tmp_path / "server", "server")

    cfg = PublishConfig(endpoint=TCP, curve=CurveConfig(server_secret_key=server_secret, allowed_clients_dir=allowed))
    with Publisher(cfg) as pub:
        ep = pub.endpoint
        with Subscriber(ep, curve_server_public_key=server_pub, client_secret_key=client_secret, timeout_s=2) as ok, \
                Subscriber(ep, curve_server_public_key=server_pub, client_secret_key=intruder_secret) as intruder, \
                Subscriber(ep, curve_server_public_key=server_pub) as ephemeral, \
                Subscriber(ep) as plain:
            connect(pub, ok)
            for i in range(20):
                pub.send(frame(i))
                for s in (intruder, ephemeral, plain):
                    assert s.recv(timeout=0.03) is None
            got = drain(ok)
            assert len(got) == 20 and np.array_equal(got[-1].rgb(), pixels(19))
            assert intruder.received == ephemeral.received == plain.received == 0
    with pytest.raises(PublishError, match="no secret key"):
        Publisher(PublishConfig(endpoint=TCP, curve=CurveConfig(server_secret_key=server_pub, allowed_clients_dir=allowed)))
    missing = CurveConfig(server_secret_key=server_secret, allowed_clients_dir=tmp_path / "nope")
    with pytest.raises(PublishError, match="not found"):
        Publisher(PublishConfig(endpoint=TCP, curve=missing))


def test_refused_curve_subscribers_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stream_denoise.publish")
    server_pub, server_secret = keygen(tmp_path, "server")
    (tmp_path / "allowed").mkdir()
    _, intruder_secret = keygen(tmp_path, "intruder")
    cfg = PublishConfig(endpoint=TCP, curve=CurveConfig(server_secret_key=server_secret, allowed_clients_dir=tmp_path / "allowed"))
    with Publisher(cfg) as pub:
        ep = pub.endpoint
        for kw, why in (({"curve_server_public_key": server_pub, "client_secret_key": intruder_secret}, "not in"),
                        ({}, "handshake failed")):
            with Subscriber(ep, **kw) as sub:  # type: ignore[arg-type]
                assert wait_until(lambda: (pub.send(frame(0)), sub.recv(timeout=0.02))[1] is None
                                  and any(why in r.getMessage() for r in caplog.records), 10), why
    refusals = [r.getMessage() for r in caplog.records if "refused a subscriber" in r.getMessage()]
    assert len(refusals) >= 2 and all(ep in m for m in refusals)
    assert pub.refused >= 2


# -- VideoWriter and record --------------------------------------------------------------------

def read_video(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_video_writer_mkv_round_trips_exactly(tmp_path: Path) -> None:
    frames = [pixels(i, 51, 37) for i in range(6)]  # odd sizes, noise: the worst case
    with VideoWriter(tmp_path / "a.mkv", 51, 37, fps=25) as vw:
        for f in frames:
            vw.write(f)
    out = read_video(tmp_path / "a.mkv")
    assert len(out) == 6 and all(np.array_equal(a, b) for a, b in zip(frames, out))
    with VideoWriter(tmp_path / "b.mkv", 51, 37, color="BGR") as vw:
        vw.write(frames[0][..., ::-1])
    assert np.array_equal(read_video(tmp_path / "b.mkv")[0], frames[0])


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".avi"])
def test_video_writer_lossy_formats_pad_odd_sizes(tmp_path: Path, suffix: str) -> None:
    smooth = np.tile(np.linspace(0, 255, 51, dtype=np.uint8)[None, :, None], (37, 1, 3))
    with VideoWriter(tmp_path / f"a{suffix}", 51, 37, fps=29.97) as vw:
        for _ in range(9):
            vw.write(smooth)
    out = read_video(tmp_path / f"a{suffix}")
    assert len(out) == 9 and out[0].shape == (38, 52, 3)
    assert np.abs(out[4][:37, :51].astype(int) - smooth).mean() < 4


def test_video_writer_timestamps_and_errors(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "t.mkv", 8, 8) as vw:
        for t in (50.0, 50.04, 50.04, 50.2):  # a repeated timestamp is nudged forward
            vw.write(np.zeros((8, 8, 3), np.uint8), pts=t)
        with pytest.raises(ValueError):
            vw.write(np.zeros((8, 9, 3), np.uint8))
    with av.open(str(tmp_path / "t.mkv")) as c:
        times = [float(f.time) for f in c.decode(video=0)]
    assert times[0] == 0 and times[1] == pytest.approx(0.04) and times[-1] == pytest.approx(0.2)
    assert times == sorted(set(times))
    with pytest.raises(ConfigError, match="extension"):
        VideoWriter(tmp_path / "x.gif", 8, 8)
    with pytest.raises(ConfigError, match="cannot write"):
        VideoWriter(tmp_path / "missing" / "x.mkv", 8, 8)


def test_record_writes_received_frames_losslessly(tmp_path: Path) -> None:
    stop = threading.Event()
    frames = {i: pixels(i, 40, 30) for i in range(400)}
    with Publisher(PublishConfig(endpoint=TCP, sndhwm=1000)) as pub:
        ep = pub.endpoint

        def produce() -> None:
            i = 0
            while not stop.is_set() and i < 400:
                pub.send(Frame(frames[i], i, None, time.time(), "cam"))
                i += 1
                time.sleep(0.01)

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            result = record(ep, tmp_path / "rec.mkv", count=10, timeout_s=5, fps=25)
        finally:
            stop.set()
            producer.join()
    assert result.written == 10 and (result.width, result.height) == (40, 30) and not result.interrupted
    out = read_video(tmp_path / "rec.mkv")
    assert len(out) == 10
    lookup = {f.tobytes(): i for i, f in frames.items()}
    indices = [lookup.get(f.tobytes(), -1) for f in out]
    assert -1 not in indices and indices == sorted(indices)


def test_record_times_out_without_a_publisher(tmp_path: Path) -> None:
    with pytest.raises(SourceTimeout, match="no frame"):
        record("tcp://127.0.0.1:1", tmp_path / "x.mkv", count=1, timeout_s=0.3)
    assert not (tmp_path / "x.mkv").exists()
    with pytest.raises(ConfigError):
        record("tcp://127.0.0.1:1", tmp_path / "x.gif", count=1, timeout_s=0.3)
