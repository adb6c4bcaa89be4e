"""Many streams on one host: total throughput for 1, 4 and 16 cameras (lite, ONNX Runtime, small frames).

Each stream is the same noisy clip looped (file sources are lossless, so every frame is denoised
and published). ``fps_total``: frames out per second from the first published frame to the last
(start-up, which for ``processes`` includes starting the decode processes, is reported apart as
``startup_s``); ``cores``: busy CPU seconds of the machine (``/proc/stat``) per second of wall time;
``e2e_p50_ms``/``e2e_p99_ms``: decode -> publish latency; ``rss_mb`` / ``workers_rss_mb``: the largest
resident size of this process and of the decode workers together during the run, sampled every
0.5 s, and ``rss_growth_mb`` this process's from the first sample to the last. ``--realtime S``: the sources are paced at their frame rate (25 fps)
for S seconds and the figure is the share of frames dropped (the most cameras held with < 1 %
drops). Arrangements:

- ``separate``: one :class:`Pipeline` per camera, each with its own ONNX Runtime session (all in one
  process, threads; the cores are split between the sessions);
- ``multicam``: one :class:`MultiCamera`, one shared session, windows of same-size cameras batched
  (``[batch] max_size`` = the number of streams, ``max_wait_ms`` 4);
- ``multicam-unbatched``: the same with ``max_size = 1`` (shows what batching itself adds);
- ``processes``: the multi-process runtime (:mod:`stream_denoise.fleet`, the default of ``run
  --config``): decode worker processes write frames into shared-memory rings, inference lanes (one
  one-thread session per core) take the newest frame of each camera in turn;
- ``ray`` (``--ray``): the cameras as Ray actors and 2 Ray Serve replicas of 1 CPU each on a local
  cluster (the per-host figure of a scale-out; set-up time excluded); windows and results through
  shared memory (``[ray] shared_memory``, the default);
- ``ray-arrays`` (``--ray``): the same with windows and results as arrays in Ray's requests (its
  object store: ``shared_memory = false``, what a camera on another host than its replica does).

    python -m benchmarks.streams [--streams 1,4,16] [--size 320x180] [--frames 480] [--ray]
                                 [--model lite --backend onnxruntime]   (e.g. base / cuda on a GPU)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .speed import source_clip

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.streams")


MODEL, BACKEND = "lite", "onnxruntime"  # set by --model / --backend
REALTIME = 0.0  # --realtime: seconds of paced sources (0: as fast as they decode)


def _deployment(clip: Path, n: int, per_stream: int, tmp: str, mode: str, threads: int):  # type: ignore[no-untyped-def]
    from stream_denoise.config import DeploymentConfig

    data = {"cameras": [{"name": f"cam{i:03d}", "source": {"uri": str(clip), "loop": True, "realtime": REALTIME > 0}}
                        for i in range(n)],
            "model": {"model": MODEL, "backend": BACKEND, "threads": threads},
            "publish": {"endpoint": f"ipc://{tmp}/{mode}-{n}", "sndhwm": 4},
            "batch": {"max_size": 1 if mode == "multicam-unbatched" else min(n, 16), "max_wait_ms": 4},
            "runtime": {"decode_workers": None if mode == "processes" else 0},
            "max_frames": per_stream, "status_interval_s": 3600, "log_level": "warning"}
    if mode.startswith("ray"):
        data["ray"] = {"replicas": 2, "replica_cpus": 1, "camera_cpus": 0.25, "local_cpus": max(4, n),
                       "shared_memory": mode == "ray"}
    return DeploymentConfig.model_validate(data)


def measure(clip: Path, n: int, mode: str, frames: int, threads: int) -> dict:
    from stream_denoise.config import ModelConfig, PublishConfig, RunConfig, SourceConfig
    from stream_denoise.multicam import MultiCamera
    from stream_denoise.pipeline import Pipeline

    per_stream = int(REALTIME * 25) if REALTIME else max(frames // n, 20)
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "separate":
            each = max(1, threads // n)
            cfgs = [RunConfig(source=SourceConfig(uri=str(clip), loop=True, name=f"cam{i:02d}"),
                              model=ModelConfig(model=MODEL, backend=BACKEND, threads=each),
                              publish=PublishConfig(endpoint=f"ipc://{tmp}/sep-{i}"), max_frames=per_stream,
                              status_interval_s=3600) for i in range(n)]
            pipes = [Pipeline(c) for c in cfgs]
            try:
                outs = [0] * n

                def work(i: int) -> None:
                    outs[i] = pipes[i].run().frames_out

                workers = [threading.Thread(target=work, args=(i,)) for i in range(n)]
                t0 = time.perf_counter()
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                wall = time.perf_counter() - t0
            finally:
                for p in pipes:
                    p.close()
            return {"mode": mode, "streams": n, "frames": sum(outs), "wall_s": wall, "fps_total": sum(outs) / wall,
                    "threads_per_session": each}
        cfg = _deployment(clip, n, per_stream, tmp, mode, threads)
        if mode.startswith("ray"):
            from stream_denoise.ray_serve import RayDeployment

            with RayDeployment(cfg) as dep:
                busy0 = _busy_seconds()
                t0 = time.perf_counter()
                res = dep.run()
                wall = time.perf_counter() - t0
                busy = _busy_seconds() - busy0
            total = sum(r.get("frames_out", 0) for r in res.values())
            transport: dict[str, int] = {}
            for r in res.values():
                for k, v in r.get("transport", {}).items():
                    transport[k] = transport.get(k, 0) + v
            return {"mode": mode, "streams": n, "frames": total, "wall_s": wall, "fps_total": total / wall,
                    "cores": busy / wall, "replicas": 2, "requests": transport}
        with MultiCamera(cfg) as mc:
            first: list[tuple[float, int]] = []
            done = threading.Event()

            rss: list[tuple[float, float]] = []  # (this process, the decode workers together) MB, every 0.5 s

            def watch() -> None:  # when the first frame came out, and how many by then; then memory
                while not first and not done.wait(0.005):
                    out = sum(c.metrics.frames_out for c in mc.cameras)
                    if out:
                        first.append((time.perf_counter(), out))
                while not done.wait(0.5):
                    workers = mc.workers
                    pids = [workers.pid(w) for w in range(workers.workers)] if workers is not None else []
                    rss.append((_rss_mb(os.getpid()), sum(_rss_mb(p) for p in pids if p is not None)))

            watcher = threading.Thread(target=watch, daemon=True)
            busy0 = _busy_seconds()
            t0 = time.perf_counter()
            watcher.start()
            metrics = mc.run()
            end = time.perf_counter()
            done.set()
            busy1 = _busy_seconds()
            stats = next(iter(mc.batchers.values())).stats if mc.batchers else None
            snaps = [c.snapshot() for c in mc.cameras]
        total = sum(m.frames_out for m in metrics.values())
        t_first, n_first = first[0] if first else (t0, 0)
        e2e = [x for m in metrics.values() for x in m.latency["e2e"].values()]
        decoded = sum(int(s["source_frames_decoded"]) for s in snaps)
        dropped = sum(int(s["source_frames_dropped"]) for s in snaps)
        return {"mode": mode, "streams": n, "frames": total, "wall_s": end - t0, "startup_s": t_first - t0,
                "fps_total": (total - n_first) / max(end - t_first, 1e-9), "cores": (busy1 - busy0) / (end - t0),
                "e2e_p50_ms": 1000 * float(np.percentile(e2e, 50)) if e2e else None,
                "e2e_p99_ms": 1000 * float(np.percentile(e2e, 99)) if e2e else None,
                "rss_mb": max((r for r, _ in rss), default=None), "workers_rss_mb": max((w for _, w in rss), default=None),
                "rss_growth_mb": rss[-1][0] - rss[0][0] if len(rss) > 1 else None,
                "decoded": decoded, "dropped": dropped, "drop_pct": 100 * dropped / max(decoded, 1),
                "mean_batch": stats.mean_size if stats else 1.0, "largest_batch": stats.largest if stats else 1}


def _rss_mb(pid: int) -> float:
    """Resident memory of a process (MB; shared-memory rings count in each process that touched them)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (``/proc/stat``): the decode workers' threads, the
    lanes and everything else; on a machine that runs nothing else, the run's own use."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.streams", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="1,4,16", help="numbers of cameras")
    p.add_argument("--size", default="320x180", help="WxH of every stream")
    p.add_argument("--frames", type=int, default=480, help="frames in all per measurement (at least 20 per stream)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--ray", action="store_true", help="also through a local Ray cluster (ray[serve])")
    p.add_argument("--modes", default="separate,multicam-unbatched,multicam,processes",
                   help="arrangements to measure (separate, multicam-unbatched, multicam, processes)")
    p.add_argument("--realtime", type=float, default=0.0,
                   help="pace the sources at 25 fps for this many seconds and report drops (0: flat out)")
    p.add_argument("--model", default="lite")
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime, or cuda / tensorrt on a GPU")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "streams.json")
    a = p.parse_args(argv)
    global MODEL, BACKEND, REALTIME
    MODEL, BACKEND, REALTIME = a.model, a.backend, a.realtime
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .report import machine_info

    w, h = (int(v) for v in a.size.lower().split("x"))
    encoded, _ = source_clip(w, h, 48)
    modes = a.modes.split(",") + (["ray", "ray-arrays"] if a.ray else [])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mkv"
        clip.write_bytes(encoded)
        measure(clip, 1, "multicam", 40, a.threads)  # warm-up: model load, page cache
        for n in (int(v) for v in a.streams.split(",")):
            for mode in modes:
                r = measure(clip, n, mode, a.frames, a.threads)
                log.info("%2d streams %-18s %6.1f fps in all (%d frames in %.1f s, start-up %.1f s, %.2f cores, "
                         "e2e p50 %s ms, drops %.2f %%)", n, mode, r["fps_total"], r["frames"], r["wall_s"],
                         r.get("startup_s", 0.0), r.get("cores", 0.0), f"{r['e2e_p50_ms']:.0f}" if r.get("e2e_p50_ms") else "-",
                         r.get("drop_pct", 0.0))
                runs.append(r)
    meta = machine_info()
    meta["command"] = "python -m benchmarks.streams " + " ".join(sys.argv[1:] if argv is None else argv)
    from .speed import gpu_info

    meta["gpu"] = gpu_info()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"meta": meta, "size": [w, h], "model": MODEL, "backend": BACKEND, "runs": runs}, indent=1))
    log.info("wrote %s", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
