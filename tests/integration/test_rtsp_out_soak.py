"""Issue 27 soak: two cameras in one process, one served over RTSP and one pushed to a media server,
for a few minutes while viewers come and go and the media server is killed and restarted again and
again. Every return is picked up within 5 s, ZeroMQ never waits, and memory stays flat.
(`python -m benchmarks.rtsp_out --soak-minutes N` runs the same for longer.)"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.conftest import _free_port
from tests.rtsp_out_helpers import Published, Run, ffmpeg_pull
from tests.waiting import wait_until

SOAK_S = 180
WARMUP_S = 45
CYCLE_S = 20  # the media server is killed every CYCLE_S and back 2 s later; a viewer pulls in between


def soak_config(tmp_path, source: str, endpoint: str, metrics_port: int, rtsp_port: int, push_url: str):
    path = tmp_path / "cams.toml"
    path.write_text(f"""
status_interval_s = 5
metrics_port = {metrics_port}

[model]
model = "lite"
backend = "onnxruntime"

[publish]
endpoint = "{endpoint}"
sndhwm = 10000

[[cameras]]
name = "front"
source = "{source}"
[cameras.rtsp_out]
port = {rtsp_port}

[[cameras]]
name = "back"
source = "{source}"
[cameras.rtsp_out]
url = "{push_url}"
""")
    return path


@pytest.mark.slow
def test_soak_two_cameras_viewers_and_a_flapping_media_server(rtsp_server, record_server, tmp_path):
    endpoint = f"ipc://{tmp_path / 'pub'}"
    metrics_port, rtsp_port = _free_port(), _free_port()
    cfg = soak_config(tmp_path, rtsp_server.url, endpoint, metrics_port, rtsp_port, record_server.url)
    pub = Published(endpoint)
    run = Run(["--config", str(cfg)], tmp_path / "run.log")
    served = f"rtsp://127.0.0.1:{rtsp_port}/front"
    sent = 'camera_rtsp_sent{camera="%s"}'
    rss: list[tuple[float, float]] = []
    resumed: list[float] = []
    pulls = 0
    try:
        wait_until(lambda: not run.alive() or run.metrics(metrics_port).get(sent % "back", 0) >= 30, 120)
        assert run.alive() and run.metrics(metrics_port)[sent % "back"] >= 30, run.output()
        start = time.monotonic()
        cycle = 0
        while time.monotonic() - start < SOAK_S:
            cycle += 1
            got = ffmpeg_pull(served, 30, tmp_path / f"pull{cycle}.ts")  # a viewer comes and goes
            assert got.returncode == 0, got.stderr
            pulls += 1
            record_server.kill()
            time.sleep(2)
            record_server.start()
            back, files = time.monotonic(), len(record_server.files())
            assert wait_until(lambda: len(record_server.files()) > files and record_server.files()[-1].stat().st_size, 15)
            resumed.append(time.monotonic() - back)
            while time.monotonic() - start < cycle * CYCLE_S:
                rss.append((time.monotonic() - start, run.rss_mb()))
                time.sleep(2)
        m = run.metrics(metrics_port)
        assert pub.max_gap_s(start, time.monotonic()) < 2.0, "ZeroMQ publishing stalled"
    finally:
        code = run.stop()
        pub.close()
    assert code == 0, run.output()[-3000:]
    assert max(resumed) < 5, resumed
    assert m['camera_rtsp_reconnects{camera="back"}'] >= cycle - 1, m
    assert m['camera_rtsp_dropped{camera="back"}'] > 0 and m['camera_rtsp_dropped{camera="front"}'] == 0, m
    assert m['camera_rtsp_reconnects{camera="front"}'] == 0 and m[sent % "front"] >= 30 * pulls, m
    later = np.array([(t, mb) for t, mb in rss if t >= WARMUP_S])
    slope = np.polyfit(later[:, 0], later[:, 1], 1)[0] * 60  # MB per minute after the warm-up
    growth = later[:, 1].max() - later[0, 1]
    print(f"soak: {cycle} cycles, resumed after {np.round(resumed, 2).tolist()} s, RSS {later[0, 1]:.0f} -> "
          f"{later[-1, 1]:.0f} MB (max growth {growth:.1f} MB, {slope:+.2f} MB/min)")
    assert growth < 20 and slope < 3, (growth, slope, rss)
