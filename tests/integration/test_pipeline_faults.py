"""The pipeline survives a camera that drops and comes back, and a camera that stalls: it keeps
running, publishes nothing stale, resumes with a reset temporal buffer, and leaks no threads."""

import threading
import time

from stream_denoise.config import ModelConfig, PublishConfig, RunConfig, SourceConfig
from stream_denoise.pipeline import Pipeline
from stream_denoise.subscribe import Subscriber
from tests.waiting import wait_until


def test_camera_killed_restarted_and_stalled(rtsp_server, tmp_path):
    threads_before = threading.active_count()
    endpoint = f"ipc://{tmp_path / 'pub'}"
    cfg = RunConfig(source=SourceConfig(uri=rtsp_server.url, read_timeout_s=1.5, backoff_initial_s=0.2, backoff_max_s=1.0),
                    model=ModelConfig(model="lite", backend="onnxruntime"), publish=PublishConfig(endpoint=endpoint),
                    status_interval_s=1.0)
    got: list = []
    stop = threading.Event()
    with Subscriber(endpoint, rcvhwm=10000) as sub:
        def consume() -> None:
            while not stop.is_set():
                msg = sub.recv(timeout=0.2)
                if msg is not None:
                    got.append((time.time(), msg.header))

        consumer = threading.Thread(target=consume)
        consumer.start()
        with Pipeline(cfg) as pipe:
            runner = threading.Thread(target=pipe.run, args=(stop,))
            runner.start()
            assert wait_until(lambda: len(got) >= 10, 60), "no frames before the fault"

            rtsp_server.kill()  # the camera drops off the network
            killed_at = time.time()
            time.sleep(2.0)
            stale = [h for t, h in got if t > killed_at + 1.0 and h["captured_at"] < killed_at]
            assert not stale, "frames captured before the drop were published long after it"
            rtsp_server.start()  # ... and comes back
            back = time.time()
            assert wait_until(lambda: any(h["segment"] >= 1 for _, h in got), 30), "did not resume after reconnect"
            resumed = min(t for t, h in got if h["segment"] >= 1)
            assert resumed - back < 15
            assert pipe.source.stats.reconnects >= 1

            n = len(got)
            rtsp_server.stall()  # frozen camera: connection open, no data
            time.sleep(3.0)
            rtsp_server.resume()
            assert wait_until(lambda: len(got) > n + 10, 45), "did not recover from a stall"
            assert runner.is_alive()
            stop.set()
            runner.join(timeout=30)
            assert not runner.is_alive()
        consumer.join(timeout=10)
    segments = [h["segment"] for _, h in got]
    assert segments == sorted(segments)
    assert wait_until(lambda: threading.active_count() <= threads_before + 1, 10), threading.enumerate()
