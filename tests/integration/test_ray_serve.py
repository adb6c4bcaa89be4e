"""Scale-out on a real local Ray cluster: camera actors + a Ray Serve deployment with dynamic batching.

Three file cameras (two sizes) go through two inference replicas; each topic must receive every
frame of its own camera, in order, with the pixels the camera would compute locally — also when one
replica is killed (SIGKILL) in the middle of the run.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from stream_denoise.backends import create_backend
from stream_denoise.config import DeploymentConfig, ModelConfig, SourceConfig
from stream_denoise.denoiser import Denoiser
from stream_denoise.sources import open_source
from tests.integration.test_multicam import BAR, Collector, bar_position, camera_of, tinted
from tests.waiting import wait_until

pytest.importorskip("ray.serve", reason='Ray Serve is not installed (pip install "stream-denoise[ray]")')

from stream_denoise.ray_serve import RayDeployment, from_wire, quantise_output, to_wire

MODEL = {"model": "lite", "backend": "onnxruntime", "threads": 1}
CAMERAS = {"blue": ((40, 60, 170), (160, 96)), "green": ((40, 170, 60), (160, 96)), "small": ((120, 120, 120), (128, 64))}


def local_frames(path, n: int) -> list[np.ndarray]:
    """What `stream-denoise` computes for the file in one process (the reference pixels)."""
    den = Denoiser(create_backend(ModelConfig.model_validate(MODEL)))
    out: list[np.ndarray] = []
    with open_source(SourceConfig(uri=str(path))) as src:
        while (f := src.read(timeout=5)) is not None:
            out += [o.pixels for o in den.push(f)]
    out += [o.pixels for o in den.flush()]
    assert len(out) == n
    return out


def test_wire_format_is_lossless():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1, 15, 8, 8), dtype=np.uint8)
    x = np.multiply(pixels, np.float32(1 / 255), dtype=np.float32)
    assert np.array_equal(to_wire(x), pixels)
    assert np.array_equal(from_wire(to_wire(x)), x)  # bit for bit what the camera pre-processed
    y = rng.uniform(-0.1, 1.1, (1, 3, 8, 8)).astype(np.float32)
    expected = (np.clip(y * 255 + 0.5, 0, 255)).astype(np.uint8)
    assert np.array_equal(quantise_output(y), expected)
    # the Denoiser's own rounding of the dequantised result gives the same pixels back
    back = from_wire(quantise_output(y))
    assert np.array_equal((np.clip(back * 255 + 0.5, 0, 255)).astype(np.uint8), expected)


@pytest.mark.timeout(240)
def test_cameras_through_a_local_ray_cluster_survive_a_lost_replica(make_clip, tmp_path):
    import ray

    n = 60
    clips = {name: make_clip(f"ray-{name}.mp4", frames=n, size=size, content=tinted(rgb, size, seed))
             for seed, (name, (rgb, size)) in enumerate(CAMERAS.items())}
    base = f"ipc://{tmp_path / 'pub'}"
    cfg = DeploymentConfig.model_validate({
        "cameras": [{"name": name, "source": str(p), "topic": f"cam-{name}"}
                    for name, p in clips.items()],
        "model": MODEL, "status_interval_s": 2,
        "publish": {"endpoint": base, "sndhwm": 10000},
        "batch": {"max_size": 4, "max_wait_ms": 5},
        "ray": {"replicas": 2, "replica_cpus": 1, "camera_cpus": 0.5, "local_cpus": 4, "retries": 8},
    })
    endpoints = [cfg.camera_endpoint(i) for i in range(len(CAMERAS))]
    assert len(set(endpoints)) == 3  # each camera publishes from its own host: its own endpoint
    collectors = [Collector(ep) for ep in endpoints]
    result: dict = {}
    try:
        with RayDeployment(cfg) as dep:
            app = next(iter(dep.apps))
            pids = set()
            deadline = time.monotonic() + 30
            while len(pids) < 2 and time.monotonic() < deadline:  # both replicas up
                pids.add(dep.replica_meta(app)["pid"])
            assert len(pids) == 2, pids
            time.sleep(0.5)  # the subscribers join before the first frame (file cameras wait for run)
            stop = threading.Event()
            runner = threading.Thread(target=lambda: result.update(dep.run(stop)), daemon=True)
            runner.start()
            # let every camera publish a few frames, then kill one replica mid-stream
            assert wait_until(lambda: all(c.count(f"cam-{name}") >= 8 for c, name in zip(collectors, CAMERAS)), 90,
                              poll=0.005)
            victim = min(pids)
            os.kill(victim, signal.SIGKILL)
            runner.join(150)
            assert not runner.is_alive(), "the deployment did not finish"
            metas = [dep.replica_meta(app) for _ in range(8)]
            assert victim not in {m["pid"] for m in metas}
            shared_after = max(m["shared"] for m in metas)
    finally:
        for c in collectors:
            c.close()
    assert not ray.is_initialized()  # the local cluster this deployment started is gone

    assert {r["state"] for r in result.values()} == {"ended"}, result
    for r in result.values():  # one host: every window went through shared memory, none as arrays
        assert r["transport"]["shared_memory"] >= n // 2 and r["transport"]["arrays"] == 0, r["transport"]
    assert shared_after > 0  # the surviving replica read windows from the cameras' blocks
    for (name, (_, (width, _h))), col in zip(CAMERAS.items(), collectors):
        got = col.by_topic[f"cam-{name}"]
        assert set(col.by_topic) == {f"cam-{name}"}
        assert [m.index for m in got] == list(range(n)), name  # every frame, in order, despite the kill
        assert [m.seq for m in got] == list(range(n)), name
        assert all(camera_of(m.rgb()) == name for m in got)
        assert all(abs(bar_position(m.rgb()) - (2 * m.index) % (width - BAR)) <= 1 for m in got)
        ref = local_frames(clips[name], n)
        worst = max(int(np.abs(m.rgb().astype(int) - r.astype(int)).max()) for m, r in zip(got, ref))
        assert worst <= 1, (name, worst)  # batched on a replica == computed locally (±1 level)


def test_bad_address_and_missing_file_are_one_line(tmp_path):
    """Joining a cluster that is not there, or a camera file that is missing: one clear line, no hang."""
    from tests.unit.test_cli_errors import assert_one_line_error, cli

    cfg = tmp_path / "deploy.toml"
    cfg.write_text('[[cameras]]\nname = "a"\nsource = "/nonexistent/a.mp4"\n\n[ray]\naddress = "127.0.0.1:1"\n')
    assert_one_line_error(cli("run", "--config", str(cfg)), "cannot reach the Ray cluster at 127.0.0.1:1")
    cfg.write_text('[[cameras]]\nname = "a"\nsource = "/nonexistent/a.mp4"\n\n[ray]\nlocal_cpus = 4\n')
    assert_one_line_error(cli("run", "--config", str(cfg)), "a: ", "/nonexistent/a.mp4")


@pytest.mark.timeout(180)
def test_a_camera_on_another_host_falls_back_to_arrays():
    """A real Serve replica answers a shared-memory request from 'another host' (a block it must not
    read) with "not read"; the camera resends the arrays, sends arrays for a while, then tries shared
    memory again. Every answer equals the local computation."""
    import ray
    from ray import serve

    from stream_denoise.config import BatchConfig, RayConfig
    from stream_denoise.fleet.exchange import WindowExchange
    from stream_denoise.ray_serve import REMOTE_RUN, ServeBackend, deployment, node_id

    model = ModelConfig.model_validate(MODEL)
    local = create_backend(model)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (1, local.frames, 3, 32, 48), dtype=np.uint8)
    maps = rng.uniform(0.5, 3.0, (1, local.frames, local.noise_planes, 32, 48)).astype(np.float32)
    x = from_wire((pixels, maps))
    expected = from_wire(quantise_output(local.infer(x)))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")
        handle = serve.run(deployment(model, BatchConfig(max_size=2, max_wait_ms=1), RayConfig(replicas=1))
                           .bind(model.model_dump_json()), name="fallback", route_prefix=None)
        here = ServeBackend(handle, exchange=WindowExchange(node_id()))
        assert np.array_equal(here.infer(x), expected)
        assert here.transport == {"shared_memory": 1, "arrays": 0, "remote": 0}
        away = ServeBackend(handle, exchange=WindowExchange("a-node-of-another-host"))
        for _ in range(REMOTE_RUN + 1):
            assert np.array_equal(away.infer(x), expected)
        # one refused request, then REMOTE_RUN requests as arrays (the first is the refused one's resend)
        assert away.transport == {"shared_memory": 0, "arrays": REMOTE_RUN + 1, "remote": 2}, away.transport
        assert handle.meta.remote().result(timeout_s=30)["shared"] == 1
        here.close()
        away.close()
    finally:
        serve.shutdown()
        ray.shutdown()
