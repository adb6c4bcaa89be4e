"""Many cameras in one process: real clips, a real RTSP server, real ZeroMQ, the shipped lite model.

Each camera shows its own content (a tinted background with a bar that moves 2 px per frame), so a
received frame says which camera it came from and which frame it is.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict

import numpy as np
import pytest

from stream_denoise.backends import Capabilities
from stream_denoise.config import DeploymentConfig
from stream_denoise.errors import BackendUnavailable
from stream_denoise.multicam import BatchingBackend, MultiCamera
from stream_denoise.subscribe import Received, Subscriber
from tests.waiting import wait_until

MODEL = {"model": "lite", "backend": "onnxruntime", "threads": 2}
BAR = 8
# name -> (background RGB, (width, height)); the RTSP server's clip (conftest) is red-grey
TINTS = {"blue": ((40, 60, 170), (160, 96)), "green": ((40, 170, 60), (160, 96)), "small": ((120, 120, 120), (128, 64))}


def tinted(rgb: tuple[int, int, int], size: tuple[int, int], seed: int):
    width, height = size
    rng = np.random.default_rng(seed)

    def content(i: int) -> np.ndarray:
        img = np.empty((height, width, 3), np.float32)
        img[...] = rgb
        x = (2 * i) % (width - BAR)
        img[:, x : x + BAR] = 235
        img += rng.normal(0, 8, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)

    return content


def camera_of(image_rgb: np.ndarray) -> str:
    """Which camera's content this is, from the background colour (median per channel)."""
    bg = np.median(image_rgb.reshape(-1, 3), axis=0)
    if image_rgb.shape[:2] == (64, 128):
        return "small"
    if bg[2] > bg[0] + 60:
        return "blue"
    if bg[1] > bg[0] + 60:
        return "green"
    if bg[0] > bg[1] + 8:
        return "rtsp"
    return "?"


def bar_position(image_rgb: np.ndarray) -> int:
    cols = image_rgb.astype(np.float32).mean(axis=(0, 2))
    return int(np.argmax(np.convolve(cols, np.ones(BAR), mode="valid")))


def deployment(cameras: list[dict], endpoint: str, **extra) -> DeploymentConfig:
    return DeploymentConfig.model_validate({
        "cameras": cameras, "model": MODEL, "status_interval_s": 1,
        "publish": {"endpoint": endpoint, "sndhwm": 10000}, **extra,
    })


class Collector:
    """Receives every topic in a thread: ``by_topic[topic] -> [Received]`` in arrival order."""

    def __init__(self, endpoint: str) -> None:
        self.sub = Subscriber(endpoint, rcvhwm=100000)
        self.by_topic: dict[str, list[Received]] = defaultdict(list)
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.sub.recv(timeout=0.1)
            if msg is not None:
                topic = msg.topic.decode()
                self.by_topic[topic].append(msg)
                self.arrivals[topic].append(time.monotonic())

    def count(self, topic: str) -> int:
        return len(self.by_topic[topic])

    def wait(self, cond, timeout: float) -> bool:
        return wait_until(cond, timeout, poll=0.02)

    def close(self) -> None:
        time.sleep(0.2)  # what is in flight
        self._stop.set()
        self._thread.join(5)
        self.sub.close()


def start(mc: MultiCamera) -> tuple[threading.Event, threading.Thread, dict]:
    stop, result = threading.Event(), {}

    def target() -> None:
        try:
            result["metrics"] = mc.run(stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            result["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return stop, t, result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------------
# four cameras at once: files of two sizes and a real RTSP camera
# ---------------------------------------------------------------------------------------------------

def test_four_cameras_each_topic_gets_its_own_frames_in_order(make_clip, rtsp_server, tmp_path):
    n = 30
    clips = {name: make_clip(f"{name}.mp4", frames=n, size=size, content=tinted(rgb, size, seed))
             for seed, (name, (rgb, size)) in enumerate(TINTS.items())}
    endpoint = f"ipc://{tmp_path / 'pub'}"
    cameras = [{"name": name, "source": str(path), "topic": f"cam-{name}"} for name, path in clips.items()]
    cameras.append({"name": "rtsp", "topic": "cam-rtsp", "source": {"uri": rtsp_server.url, "read_timeout_s": 5}})
    col = Collector(endpoint)
    try:
        # the one-process runtime, whose shared backend batches CPU windows (the multi-process one: test_fleet)
        with MultiCamera(deployment(cameras, endpoint, runtime={"decode_workers": 0})) as mc:
            time.sleep(0.3)  # the subscriber joins before the first frame (file sources wait for us)
            stop, runner, result = start(mc)
            done = col.wait(lambda: all(col.count(f"cam-{c}") >= n for c in TINTS) and col.count("cam-rtsp") >= 20, 60)
            stop.set()
            runner.join(15)
            assert not runner.is_alive(), "run() did not return after stop"
            assert "error" not in result, result
            stats = {m.model: b.stats for m, b in mc.batchers.items()}
            states = {c.name: c.state for c in mc.cameras}
            published = sum(c.metrics.frames_out for c in mc.cameras)
    finally:
        col.close()
    assert done, {t: len(v) for t, v in col.by_topic.items()}
    assert set(col.by_topic) == {"cam-blue", "cam-green", "cam-small", "cam-rtsp"}
    assert states["blue"] == states["green"] == states["small"] == "ended"

    for name, (_, (width, height)) in TINTS.items():
        got = col.by_topic[f"cam-{name}"]
        assert [m.index for m in got] == list(range(n)), name  # every frame of a file, in order
        assert [m.seq for m in got] == list(range(n)), name
        for m in got:
            assert m.source == name and (m.header["width"], m.header["height"]) == (width, height)
            rgb = m.rgb()
            assert camera_of(rgb) == name, (name, m.index)
            assert abs(bar_position(rgb) - (2 * m.index) % (width - BAR)) <= 1, (name, m.index)

    live = col.by_topic["cam-rtsp"]
    idx = [m.index for m in live]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
    assert all(m.source == "rtsp" and camera_of(m.rgb()) == "rtsp" for m in live)

    (lite,) = stats.values()  # one model shared by all four cameras
    assert lite.windows == published  # every published frame went through the shared backend once
    assert lite.largest >= 2, "same-size cameras were never batched together"


# ---------------------------------------------------------------------------------------------------
# a dead camera never stalls the others
# ---------------------------------------------------------------------------------------------------

def test_dead_camera_does_not_stop_the_others(make_clip, rtsp_server, tmp_path):
    live_files = {name: make_clip(f"live-{name}.mp4", frames=30, size=size, content=tinted(rgb, size, 7))
                  for name, (rgb, size) in list(TINTS.items())[:2]}
    endpoint = f"ipc://{tmp_path / 'pub'}"
    cameras = [{"name": name, "source": {"uri": str(p), "loop": True, "realtime": True}} for name, p in live_files.items()]
    cameras.append({"name": "rtsp", "source": {"uri": rtsp_server.url, "read_timeout_s": 2, "open_timeout_s": 2,
                                               "backoff_initial_s": 0.2, "backoff_max_s": 1}})
    cameras.append({"name": "unplugged", "source": {"uri": f"rtsp://127.0.0.1:{free_port()}/none", "open_timeout_s": 1,
                                                    "backoff_initial_s": 0.2, "backoff_max_s": 0.5}})
    col = Collector(endpoint)
    try:
        with MultiCamera(deployment(cameras, endpoint, metrics_port=0)) as mc:
            stop, runner, result = start(mc)
            assert col.wait(lambda: all(col.count(t) >= 10 for t in ("blue", "green", "rtsp")), 30), \
                {t: len(v) for t, v in col.by_topic.items()}
            base = f"http://127.0.0.1:{mc.health.port}"
            assert urllib.request.urlopen(f"{base}/healthz", timeout=2).status == 200

            rtsp_server.kill()
            killed_at = time.monotonic()
            before = {t: col.count(t) for t in ("blue", "green")}
            assert col.wait(lambda: not mc.camera("rtsp").connected, 10), "the killed camera still looks connected"
            time.sleep(1.5)
            after = {t: col.count(t) for t in ("blue", "green")}
            metrics = urllib.request.urlopen(f"{base}/metrics", timeout=2).read().decode()
            health = urllib.request.urlopen(f"{base}/healthz", timeout=2).status
            states = {c.name: c.state for c in mc.cameras}

            stop.set()
            t0 = time.monotonic()
            runner.join(15)
            stop_s = time.monotonic() - t0
            assert not runner.is_alive() and "error" not in result, result
    finally:
        col.close()
    for t in ("blue", "green"):
        # 30 fps files: ~45 frames in 1.5 s plus the detection time; a stall would show as a long gap
        assert after[t] - before[t] >= 30, (t, before, after)
        gaps = np.diff([a for a in col.arrivals[t] if a >= killed_at - 0.5])
        assert gaps.max() < 0.5, (t, gaps.max())
        idx = [m.index for m in col.by_topic[t]]
        assert idx == sorted(idx)
    assert health == 200  # healthy while any camera publishes
    assert 'stream_denoise_camera_up{camera="rtsp"} 0' in metrics
    assert 'stream_denoise_camera_up{camera="unplugged"} 0' in metrics
    assert 'stream_denoise_camera_up{camera="blue"} 1' in metrics
    assert states["unplugged"] == "connecting" and states["rtsp"] == "running"  # both retrying, neither failed
    assert col.count("unplugged") == 0
    assert stop_s < 5


def test_every_camera_failing_raises(make_clip, tmp_path):
    endpoint = f"ipc://{tmp_path / 'pub'}"
    cfg = deployment([{"name": "gone", "source": {"uri": f"rtsp://127.0.0.1:{free_port()}/x", "reconnect": False,
                                                  "open_timeout_s": 1}}], endpoint)
    with MultiCamera(cfg) as mc, pytest.raises(ConnectionError):
        mc.run()
    assert mc.camera("gone").state == "failed"


def test_missing_file_fails_at_start(tmp_path):
    cfg = deployment([{"name": "a", "source": str(tmp_path / "nope.mp4")}], f"ipc://{tmp_path / 'pub'}")
    with pytest.raises(ConnectionError, match="no such file"):
        MultiCamera(cfg)


def test_runs_without_torch(make_clip, tmp_path):
    """The CPU image has no torch: a deployment on the shipped ONNX model must not import it."""
    clip = make_clip("notorch.mp4", frames=8, size=(64, 32), content=tinted((90, 90, 90), (64, 32), 3))
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['tensorrt'] = None\n"
        "from stream_denoise.config import DeploymentConfig\n"
        "from stream_denoise.multicam import MultiCamera\n"
        f"cfg = DeploymentConfig.model_validate({{'cameras': [{{'name': 'a', 'source': {str(clip)!r}}}],"
        f" 'model': {MODEL!r}, 'publish': {{'endpoint': 'ipc://{tmp_path / 'p'}'}}}})\n"
        "with MultiCamera(cfg) as mc: m = mc.run()\n"
        "assert m['a'].frames_out == 8, m['a'].frames_out\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------
# the batcher on its own (a fake backend: fast and exact)
# ---------------------------------------------------------------------------------------------------

class EchoBackend:
    """Returns each window's first frame; records the batch sizes it was called with."""

    name, frames, target, stride, noise_planes, map_curve = "echo", 5, 2, 4, 0, None
    capabilities = Capabilities()

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.delay_s, self.fail = delay_s, fail

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(x.shape)
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("boom")
        return x[:, :3].copy()

    def close(self) -> None:
        pass


def submit_together(batcher: BatchingBackend, inputs: list[np.ndarray], idle: int = 0) -> tuple[list, list[float]]:
    """Each input from its own busy client, all at once; ``idle`` more clients are busy but never submit."""
    clients = [batcher.client() for _ in inputs]
    idlers = [batcher.client() for _ in range(idle)]
    results: list = [None] * len(inputs)
    took = [0.0] * len(inputs)
    barrier = threading.Barrier(len(inputs) + idle)
    release = threading.Event()

    def work(i: int) -> None:
        with clients[i].busy():
            barrier.wait()
            t0 = time.monotonic()
            results[i] = clients[i].infer(inputs[i])
            took[i] = time.monotonic() - t0

    def idle_work(j: int) -> None:
        with idlers[j].busy():
            barrier.wait()
            release.wait(5)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    threads += [threading.Thread(target=idle_work, args=(j,)) for j in range(idle)]
    for t in threads:
        t.start()
    for t in threads[: len(inputs)]:
        t.join(10)
    release.set()
    for t in threads:
        t.join(10)
    return results, took


def test_batcher_joins_same_size_windows_and_keeps_sizes_apart():
    backend = EchoBackend()
    batcher = BatchingBackend(backend, max_size=8, max_wait_s=0.5)
    try:
        rng = np.random.default_rng(0)
        inputs = [rng.random((1, 15, 8, 12), np.float32) for _ in range(3)] + [rng.random((1, 15, 4, 4), np.float32)]
        results, _ = submit_together(batcher, inputs)
        for x, y in zip(inputs, results, strict=True):
            np.testing.assert_array_equal(y, x[:, :3])  # each camera gets its own row back
        assert sorted(backend.calls) == [(1, 15, 4, 4), (3, 15, 8, 12)]
        assert batcher.stats.largest == 3 and batcher.stats.windows == 4
    finally:
        batcher.close()


def test_batcher_never_waits_long_for_a_stalled_camera():
    batcher = BatchingBackend(EchoBackend(), max_size=8, max_wait_s=0.02)
    try:
        x = np.zeros((1, 15, 8, 8), np.float32)
        _, took = submit_together(batcher, [x, x.copy()], idle=2)  # two cameras busy but never sending
        assert max(took) < 0.3, took
        _, took = submit_together(batcher, [x])  # alone: no wait at all
        assert took[0] < 0.1, took
    finally:
        batcher.close()


def test_batcher_hands_errors_to_each_camera_and_goes_on():
    backend = EchoBackend(fail=True)
    batcher = BatchingBackend(backend, max_size=4, max_wait_s=0.05)
    x = np.zeros((1, 15, 8, 8), np.float32)
    client = batcher.client()
    with pytest.raises(RuntimeError, match="boom"):
        client.infer(x)
    backend.fail = False
    np.testing.assert_array_equal(client.infer(x), x[:, :3])
    batcher.close()
    with pytest.raises(BackendUnavailable):
        client.infer(x)
