"""Consumers that are not stream_denoise: imagezmq's own ImageHub, plain pyzmq, and CURVE through
`run`'s flags. Real sockets, the real `stream-denoise run` process."""

from __future__ import annotations

import json
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from stream_denoise.config import PublishConfig
from stream_denoise.frame import Frame
from stream_denoise.publish import Publisher
from stream_denoise.sockets import keygen
from stream_denoise.subscribe import Subscriber
from tests.cli_helpers import denoise_cli
from tests.waiting import wait_until

ROOT = Path(__file__).parents[2]
SAMPLE = ROOT / "stream_denoise" / "data" / "sample_noisy.mp4"
LITE = ("--model", "lite", "--backend", "onnxruntime")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "stream_denoise", "run", "--source", str(SAMPLE), *LITE, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_imagezmq_image_hub_receives_run(tmp_path: Path) -> None:
    imagezmq = pytest.importorskip("imagezmq")
    port = free_port()
    hub = imagezmq.ImageHub(open_port=f"tcp://127.0.0.1:{port}", REQ_REP=False)  # unmodified, as its README shows
    got: list[tuple[str, np.ndarray]] = []

    def receive() -> None:
        try:
            while len(got) < 40:
                msg, image = hub.recv_image()
                got.append((msg, image.copy()))
        finally:
            hub.close()

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    proc = spawn_run("--loop", "--max-frames", "300", "--publish", f"tcp://127.0.0.1:{port}", "--wire", "imagezmq")
    receiver.join(120)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert not receiver.is_alive() and len(got) == 40, err
    assert proc.returncode == 0 and "Traceback" not in err, err

    offline = denoise_cli(SAMPLE, tmp_path / "den.mkv")  # what `denoise` writes, RGB
    for msg, image in got:
        assert msg == str(SAMPLE)  # the sender's name: the topic (the source name by default)
        assert image.shape == (204, 480, 3) and image.dtype == np.uint8
        diff = np.abs(offline.astype(int) - image[..., ::-1].astype(int)).reshape(len(offline), -1).max(axis=1)
        assert diff.min() <= 1  # BGR pixels of a denoised frame, exactly


def test_imagezmq_jpeg_and_metadata_for_plain_consumers() -> None:
    imagezmq = pytest.importorskip("imagezmq")
    rgb = np.zeros((36, 52, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 52, dtype=np.uint8)[None, :]  # red ramp, constant green, no blue: a swap shows
    rgb[..., 1] = 90
    cfg = PublishConfig(endpoint="tcp://127.0.0.1:*", wire="imagezmq", encoding="jpeg", topic="gate")
    with Publisher(cfg) as pub:
        hub = imagezmq.ImageHub(open_port=pub.endpoint, REQ_REP=False)
        raw = zmq.Context.instance().socket(zmq.SUB)
        raw.setsockopt(zmq.SUBSCRIBE, b"")
        raw.connect(pub.endpoint)
        try:
            deadline = time.monotonic() + 20
            while not hub.zmq_socket.poll(50):
                assert time.monotonic() < deadline, "ImageHub never connected"
                pub.send(Frame(rgb, 7, 0.25, time.time(), "cam"))
            msg, jpg = hub.recv_jpg()
            assert raw.poll(5000)
            meta = json.loads(raw.recv_multipart()[0])
        finally:
            hub.close()
            raw.close(0)
    assert msg == "gate"
    image = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (36, 52, 3) and np.abs(image[..., ::-1].astype(int) - rgb).mean() < 6
    assert meta["msg"] == "gate" and meta["index"] == 7 and meta["encoding"] == "jpeg" and "seq" in meta


def test_plain_pyzmq_consumer_reading_the_newest_frame_stays_current() -> None:
    """The README's recipe (examples/plain_pyzmq_subscriber.py) keeps a slow consumer on the newest
    frame; the same socket read one message at a time falls further behind every second."""
    example = runpy.run_path(str(ROOT / "examples" / "plain_pyzmq_subscriber.py"))
    px = np.zeros((204, 480, 3), np.uint8)
    with Publisher(PublishConfig(endpoint="tcp://127.0.0.1:*")) as pub:
        ctx = zmq.Context.instance()
        socks = {}
        for name in ("newest", "plain"):
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(pub.endpoint)
            socks[name] = s
        stop = threading.Event()

        def produce() -> None:  # a 30 fps camera
            i = 0
            while not stop.is_set():
                pub.send(Frame(px, i, i / 30, time.time(), "cam"))
                i += 1
                time.sleep(1 / 30)

        ages: dict[str, list[float]] = {name: [] for name in socks}

        def consume(name: str) -> None:  # 4 frames a second
            s = socks[name]
            end = time.monotonic() + 5
            while time.monotonic() < end:
                parts = example["newest"](s, 100) if name == "newest" else (s.recv_multipart() if s.poll(100) else None)
                if parts is not None:
                    header, image = example["decode"](parts)
                    assert image.shape == (204, 480, 3)
                    ages[name].append(time.time() - header["published_at"])
                    time.sleep(0.25)

        producer = threading.Thread(target=produce)
        consumers = [threading.Thread(target=consume, args=(n,)) for n in socks]
        producer.start()
        for c in consumers:
            c.start()
        for c in consumers:
            c.join(30)
        stop.set()
        producer.join(10)
        for s in socks.values():
            s.close(0)
    assert len(ages["newest"]) >= 10 and max(ages["newest"][3:]) < 0.5, ages["newest"]
    assert ages["plain"][-1] > 2.0, ages["plain"]  # the backlog the recipe avoids


def test_run_curve_flags_admit_only_allowed_subscribers_and_log_refusals(tmp_path: Path) -> None:
    server_pub, server_secret = keygen(tmp_path, "server")
    _, client_secret = keygen(tmp_path / "allowed", "client")
    _, stranger_secret = keygen(tmp_path, "stranger")
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    proc = spawn_run("--loop", "--realtime", "--publish", endpoint, "--curve-key", str(server_secret),
                     "--curve-clients", str(tmp_path / "allowed"))
    try:
        with Subscriber(endpoint, curve_server_public_key=server_pub, client_secret_key=client_secret) as ok, \
                Subscriber(endpoint, curve_server_public_key=server_pub, client_secret_key=stranger_secret) as stranger:
            assert wait_until(lambda: ok.recv(timeout=0.2) is not None and ok.received >= 5, 60), "no frames with CURVE"
            assert stranger.recv(timeout=1.0) is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "CURVE on, 1 allowed client key(s)" in err
    assert "refused a subscriber" in err and "public key is not in" in err
