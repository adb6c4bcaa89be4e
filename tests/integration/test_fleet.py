"""The multi-process runtime (stream_denoise.fleet): decode worker processes, shared-memory rings,
inference lanes; real clips, a real RTSP server, real ZeroMQ, the shipped lite model."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from stream_denoise.multicam import MultiCamera
from tests.integration.test_multicam import BAR, Collector, bar_position, camera_of, deployment, start, tinted

# six files, each its own size (a received frame's size says whose it is) and tint
FILES = {f"f{i}": ((40 + 30 * i, 200 - 25 * i, 90), (96 + 16 * i, 48 + 8 * (i % 3))) for i in range(6)}


def test_eight_sources_each_topic_gets_its_own_frames_in_order(make_clip, rtsp_server, tmp_path):
    n = 24
    clips = {name: make_clip(f"fleet-{name}.mp4", frames=n, size=size, content=tinted(rgb, size, seed))
             for seed, (name, (rgb, size)) in enumerate(FILES.items())}
    endpoint = f"ipc://{tmp_path / 'pub'}"
    cameras = [{"name": name, "source": str(path), "topic": f"cam-{name}"} for name, path in clips.items()]
    cameras += [{"name": f"rtsp{i}", "topic": f"cam-rtsp{i}", "source": {"uri": rtsp_server.url, "read_timeout_s": 5}}
                for i in range(2)]
    col = Collector(endpoint)
    try:
        with MultiCamera(deployment(cameras, endpoint, runtime={"decode_workers": 3})) as mc:
            assert mc.workers is not None and mc.workers.workers == 3
            time.sleep(0.3)  # the subscriber joins before the first frame (file sources wait for us)
            stop, runner, result = start(mc)
            done = col.wait(lambda: all(col.count(f"cam-{c}") >= n for c in FILES)
                            and all(col.count(f"cam-rtsp{i}") >= 15 for i in range(2)), 90)
            stop.set()
            runner.join(15)
            assert not runner.is_alive(), "run() did not return after stop"
            assert "error" not in result, result
            states = {c.name: c.state for c in mc.cameras}
            lines = mc.status_lines()
    finally:
        col.close()
    assert done, {t: len(v) for t, v in col.by_topic.items()}
    assert set(col.by_topic) == {f"cam-{c}" for c in FILES} | {"cam-rtsp0", "cam-rtsp1"}
    assert all(states[c] == "ended" for c in FILES), states
    for name, (_, (width, height)) in FILES.items():
        got = col.by_topic[f"cam-{name}"]
        assert [m.index for m in got] == list(range(n)), name  # every frame of a file, once, in order
        assert [m.seq for m in got] == list(range(n)), name
        for m in got:
            assert m.source == name and (m.header["width"], m.header["height"]) == (width, height), name
            assert abs(bar_position(m.rgb()) - (2 * m.index) % (width - BAR)) <= 1, (name, m.index)
    for i in range(2):
        live = col.by_topic[f"cam-rtsp{i}"]
        idx = [m.index for m in live]
        assert idx == sorted(idx) and len(set(idx)) == len(idx)
        assert all(m.source == f"rtsp{i}" and camera_of(m.rgb()) == "rtsp" for m in live)
    assert any(line.startswith("runtime: 3 decode process(es)") for line in lines), lines


def test_a_killed_decode_worker_comes_back_and_the_others_never_stop(make_clip, tmp_path):
    clips = {name: make_clip(f"kill-{name}.mp4", frames=30, size=size, content=tinted(rgb, size, 3))
             for name, (rgb, size) in list(FILES.items())[:4]}
    endpoint = f"ipc://{tmp_path / 'pub'}"
    cameras = [{"name": name, "source": {"uri": str(p), "loop": True, "realtime": True}} for name, p in clips.items()]
    col = Collector(endpoint)
    try:
        with MultiCamera(deployment(cameras, endpoint, runtime={"decode_workers": 2}, metrics_port=0)) as mc:
            assert mc.workers is not None
            stop, runner, result = start(mc)
            assert col.wait(lambda: all(col.count(c) >= 10 for c in clips), 30), {t: len(v) for t, v in col.by_topic.items()}
            victim = mc.workers.worker_of("f0")
            hit = [c for c in clips if mc.workers.worker_of(c) == victim]
            spared = [c for c in clips if c not in hit]
            pid = mc.workers.pid(victim)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            before = {c: col.count(c) for c in hit}
            resumed = col.wait(lambda: all(col.count(c) >= before[c] + 5 for c in hit), 5)
            resumed_s = time.monotonic() - killed_at
            time.sleep(1.0)
            restarts = mc.workers.restarts
            snap = mc.snapshot()
            stop.set()
            runner.join(15)
            assert not runner.is_alive() and "error" not in result, result
    finally:
        col.close()
    assert resumed, f"cameras {hit} did not resume within 5 s after their worker was killed"
    assert restarts == 1 and mc.workers.pid(victim) != pid
    for c in spared:  # the other worker's cameras: no gap while the first one was down
        gaps = np.diff([a for a in col.arrivals[c] if a >= killed_at - 0.5])
        assert gaps.max() < 0.5, (c, gaps.max())
    for c in clips:
        seqs = [m.seq for m in col.by_topic[c]]
        assert seqs == list(range(len(seqs))), c  # one publisher: no message lost on the wire
        assert all(m.source == c for m in col.by_topic[c])
    assert snap["cameras_up"] == 4
    print(f"resumed {resumed_s:.2f} s after the kill")
