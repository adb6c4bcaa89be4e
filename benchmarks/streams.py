"""Many streams on one host: total throughput for 1, 4 and 16 cameras (lite, ONNX Runtime, small frames).

Each stream is the same noisy clip looped (file sources are lossless, so every frame is denoised
and published); the clock runs from ``run()`` to the last published frame. Arrangements:

- ``separate``: one :class:`Pipeline` per camera, each with its own ONNX Runtime session (all in one
  process, threads; the cores are split between the sessions);
- ``multicam``: one :class:`MultiCamera`, one shared session, windows of same-size cameras batched
  (``[batch] max_size`` = the number of streams, ``max_wait_ms`` 4);
- ``multicam-unbatched``: the same with ``max_size = 1`` (shows what batching itself adds);
- ``ray`` (``--ray``): the cameras as Ray actors and 2 Ray Serve replicas of 1 CPU each on a local
  cluster (the per-host figure of a scale-out; set-up time excluded).

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

from .speed import source_clip

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.streams")


MODEL, BACKEND = "lite", "onnxruntime"  # set by --model / --backend


def _deployment(clip: Path, n: int, per_stream: int, tmp: str, mode: str, threads: int):  # type: ignore[no-untyped-def]
    from stream_denoise.config import DeploymentConfig

    data = {"cameras": [{"name": f"cam{i:02d}", "source": {"uri": str(clip), "loop": True}} for i in range(n)],
            "model": {"model": MODEL, "backend": BACKEND, "threads": threads},
            "publish": {"endpoint": f"ipc://{tmp}/{mode}-{n}", "sndhwm": 4},
            "batch": {"max_size": 1 if mode == "multicam-unbatched" else min(n, 16), "max_wait_ms": 4},
            "max_frames": per_stream, "status_interval_s": 3600, "log_level": "warning"}
    if mode == "ray":
        data["ray"] = {"replicas": 2, "replica_cpus": 1, "camera_cpus": 0.25, "local_cpus": max(4, n)}
    return DeploymentConfig.model_validate(data)


def measure(clip: Path, n: int, mode: str, frames: int, threads: int) -> dict:
    from stream_denoise.config import ModelConfig, PublishConfig, RunConfig, SourceConfig
    from stream_denoise.multicam import MultiCamera
    from stream_denoise.pipeline import Pipeline

    per_stream = max(frames // n, 20)
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
        if mode == "ray":
            from stream_denoise.ray_serve import RayDeployment

            with RayDeployment(cfg) as dep:
                t0 = time.perf_counter()
                res = dep.run()
                wall = time.perf_counter() - t0
            total = sum(r.get("frames_out", 0) for r in res.values())
            return {"mode": mode, "streams": n, "frames": total, "wall_s": wall, "fps_total": total / wall,
                    "replicas": 2}
        with MultiCamera(cfg) as mc:
            t0 = time.perf_counter()
            metrics = mc.run()
            wall = time.perf_counter() - t0
            stats = next(iter(mc.batchers.values())).stats
        total = sum(m.frames_out for m in metrics.values())
        return {"mode": mode, "streams": n, "frames": total, "wall_s": wall, "fps_total": total / wall,
                "mean_batch": stats.mean_size, "largest_batch": stats.largest}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.streams", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="1,4,16", help="numbers of cameras")
    p.add_argument("--size", default="320x180", help="WxH of every stream")
    p.add_argument("--frames", type=int, default=480, help="frames in all per measurement (at least 20 per stream)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--ray", action="store_true", help="also through a local Ray cluster (ray[serve])")
    p.add_argument("--model", default="lite")
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime, or cuda / tensorrt on a GPU")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "streams.json")
    a = p.parse_args(argv)
    global MODEL, BACKEND
    MODEL, BACKEND = a.model, a.backend
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .report import machine_info

    w, h = (int(v) for v in a.size.lower().split("x"))
    encoded, _ = source_clip(w, h, 48)
    modes = ["separate", "multicam-unbatched", "multicam"] + (["ray"] if a.ray else [])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mkv"
        clip.write_bytes(encoded)
        measure(clip, 1, "multicam", 40, a.threads)  # warm-up: model load, page cache
        for n in (int(v) for v in a.streams.split(",")):
            for mode in modes:
                r = measure(clip, n, mode, a.frames, a.threads)
                log.info("%2d streams %-18s %6.1f fps in all (%d frames in %.1f s, mean batch %s)", n, mode, r["fps_total"],
                         r["frames"], r["wall_s"], r.get("mean_batch", "-"))
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
