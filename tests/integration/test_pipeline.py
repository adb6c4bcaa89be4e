"""The whole runtime path with real parts: encoded file -> pipeline -> real ZeroMQ sockets."""

import threading
import time
from pathlib import Path

import av  # noqa: F401  (loaded before the memory baseline of the slow-subscriber test, as stream_denoise.publish once did)
import numpy as np
import pytest

from stream_denoise.config import ModelConfig, PublishConfig, RunConfig, SourceConfig
from stream_denoise.pipeline import Pipeline
from stream_denoise.subscribe import Subscriber
from stream_denoise.train.data import read_clip
from tests.cli_helpers import denoise_cli

SAMPLE = Path(__file__).parents[2] / "stream_denoise" / "data" / "sample_noisy.mp4"


def free_endpoint(tmp_path: Path, name: str = "sock") -> str:
    return f"ipc://{tmp_path / name}"


def run_and_receive(cfg: RunConfig, endpoint: str, slow_s: float = 0.0, rcvhwm: int = 10000):
    got: list = []
    with Subscriber(endpoint, rcvhwm=rcvhwm) as sub, Pipeline(cfg) as pipe:
        time.sleep(0.3)  # subscription reaches the publisher
        done = threading.Event()

        def consume() -> None:
            while True:
                msg = sub.recv(timeout=0.5)
                if msg is None:
                    if done.is_set():
                        return
                    continue
                got.append(msg)
                if slow_s:
                    time.sleep(slow_s)

        t = threading.Thread(target=consume)
        t.start()
        metrics = pipe.run()
        done.set()
        t.join(timeout=30)
        return metrics, got, pipe


def test_run_publishes_what_denoise_writes(tmp_path):
    """Every frame of a file reaches a real subscriber in order, with correct headers, and equals
    (exactly: same model, same backend) what `stream-denoise denoise` writes losslessly."""
    endpoint = free_endpoint(tmp_path)
    cfg = RunConfig(source=SourceConfig(uri=str(SAMPLE), name="cam1"), model=ModelConfig(model="lite", backend="onnxruntime"),
                    publish=PublishConfig(endpoint=endpoint), status_interval_s=1.0)
    metrics, got, _ = run_and_receive(cfg, endpoint)
    frames = read_clip(SAMPLE)
    assert metrics.frames_in == len(frames) == metrics.frames_out
    assert len(got) >= 0.95 * len(frames)
    indices = [m.index for m in got]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    h = got[0].header
    assert (h["width"], h["height"], h["channels"], h["dtype"], h["color"], h["source"]) == (480, 204, 3, "uint8", "BGR", "cam1")

    offline = denoise_cli(SAMPLE, tmp_path / "den.mkv")
    assert offline.shape == frames.shape
    for m in got:
        rgb = m.image[..., ::-1]
        assert np.abs(rgb.astype(int) - offline[m.index]).max() <= 1
    # and it really denoises: published frames are smoother than the noisy input
    assert np.mean([np.abs(np.diff(m.image.astype(float), axis=1)).mean() for m in got]) < 0.8 * np.abs(
        np.diff(frames.astype(float), axis=2)).mean()


def test_slow_subscriber_never_blocks_and_memory_stays_bounded(tmp_path):
    import resource

    endpoint = free_endpoint(tmp_path)
    cfg = RunConfig(source=SourceConfig(uri=str(SAMPLE), loop=True), model=ModelConfig(model="lite", backend="onnxruntime"),
                    publish=PublishConfig(endpoint=endpoint, sndhwm=2), max_frames=300, status_interval_s=1.0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    metrics, got, pipe = run_and_receive(cfg, endpoint, slow_s=0.5, rcvhwm=2)
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert metrics.frames_out == 300
    assert len(got) < 150  # the subscriber really was slow...
    assert pipe.publisher.dropped + (300 - len(got)) > 0  # ...and what it could not take was dropped, not queued
    assert max(metrics.latency["publish"].values()) < 0.5  # send never waited for the subscriber
    assert grew_mb < 200


def test_health_and_prometheus_metrics(tmp_path):
    import urllib.error
    import urllib.request

    cfg = RunConfig(source=SourceConfig(uri=str(SAMPLE), loop=True), model=ModelConfig(model="lite", backend="onnxruntime"),
                    publish=PublishConfig(endpoint=free_endpoint(tmp_path)), metrics_port=0, status_interval_s=1.0)
    stop = threading.Event()
    with Pipeline(cfg) as pipe:
        url = f"http://127.0.0.1:{pipe.health.port}"
        with pytest.raises(urllib.error.HTTPError):  # not ready before any frame is out
            urllib.request.urlopen(f"{url}/healthz", timeout=5)
        t = threading.Thread(target=pipe.run, args=(stop,))
        t.start()
        deadline = time.monotonic() + 60
        while pipe.metrics.frames_out < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert urllib.request.urlopen(f"{url}/healthz", timeout=5).read() == b"ok"
        text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
        stop.set()
        t.join(timeout=30)
    from prometheus_client.parser import text_string_to_metric_families

    families = list(text_string_to_metric_families(text))
    assert all(f.documentation != "(undocumented)" for f in families), [f.name for f in families]
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}
    assert values["stream_denoise_frames_out_total", ()] >= 10
    assert ("stream_denoise_latency_seconds", (("quantile", "0.99"), ("stage", "infer"))) in values
    assert ("stream_denoise_source_reconnects_total", ()) in values


def missed(got: list) -> int:
    """Messages lost between the first and the last one received (jumps of seq)."""
    seqs = [m.seq for m in got]
    return sum(b - a - 1 for a, b in zip(seqs, seqs[1:]))


def test_a_file_reaches_a_slow_subscriber_whole(tmp_path):
    """A file is published losslessly: a subscriber slower than the pipeline still gets every frame
    (the default send high-water mark of 2 used to drop some, and no counter showed it)."""
    endpoint = free_endpoint(tmp_path)
    cfg = RunConfig(source=SourceConfig(uri=str(SAMPLE)), model=ModelConfig(model="lite", backend="onnxruntime"),
                    publish=PublishConfig(endpoint=endpoint), status_interval_s=1.0)
    metrics, got, pipe = run_and_receive(cfg, endpoint, slow_s=0.05, rcvhwm=2)
    assert metrics.frames_out == 75 and pipe.publisher.dropped == 0
    assert missed(got) == 0 and got[-1].index == 74 and len(got) >= 60


def test_a_looping_file_counts_every_frame_a_subscriber_misses(tmp_path):
    """A looping file waits one frame interval for a slow subscriber, then drops the frame for every
    subscriber and counts it: each seq gap the subscriber sees is in publish_dropped."""
    endpoint = free_endpoint(tmp_path)
    cfg = RunConfig(source=SourceConfig(uri=str(SAMPLE), loop=True), model=ModelConfig(model="lite", backend="onnxruntime"),
                    publish=PublishConfig(endpoint=endpoint), max_frames=120, status_interval_s=1.0)
    metrics, got, pipe = run_and_receive(cfg, endpoint, slow_s=0.1, rcvhwm=2)
    assert metrics.frames_out == 120
    assert 0 < missed(got) <= pipe.publisher.dropped
    assert len(got) + pipe.publisher.dropped <= 120 <= len(got) + pipe.publisher.dropped + got[0].seq
