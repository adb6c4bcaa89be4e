"""Speed: fps and per-stage latency (median, p99) of the whole path a live frame takes.

For each backend x model x resolution, one loop per frame, as the pipeline does it:

- decode:  PyAV decoding of an H.264 clip of that size (noisy bikes.mp4 resized; slice threading,
           as for live streams), to RGB
- pre / infer / post: ``Denoiser.times`` (window assembly + normalisation; the backend; crop+uint8)
- publish: ``Publisher.send`` (raw encoding) to a real ZeroMQ PUB socket on tcp loopback until a
           ``Subscriber`` has received and decoded it
- e2e:     the sum for one frame through all stages (processing only: a centered window also
           waits ``lookahead_frames`` frame intervals for future frames, reported separately)

The first ``warmup`` frames are not timed. Inference arithmetic: MACs/pixel x padded pixels x 2
FLOP, divided by the median inference time, as a fraction of a measured and a nominal peak.
Classical peers are timed on the same frames (one representative setting each).

``pipeline`` rows run the real overlapped pipeline (``stream_denoise.pipeline.Pipeline``: source
thread, inference, publish thread) on the encoded clip as a file source publishing to a ZeroMQ
subscriber: throughput is frames out / wall time with the file read as fast as possible; latency is
decode -> publish per frame with the file paced at 25 fps like a live camera (newest frame wins).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import models, peers
from .report import cpu_info, machine_info

log = logging.getLogger(__name__)

STAGES = ("decode", "pre", "infer", "post", "publish", "e2e")


@dataclass
class SpeedSettings:
    backends: list[str] = field(default_factory=lambda: ["onnxruntime", "torch"])
    models: list[str] = field(default_factory=lambda: ["lite", "lite-int8", "base", "lite-causal"])
    resolutions: list[tuple[int, int]] = field(default_factory=lambda: [(640, 360), (1280, 720), (1920, 1080)])
    frames: int = 30  # timed frames per configuration
    warmup: int = 3
    peers: list[str] = field(default_factory=lambda: ["hqdn3d", "atadenoise", "nlmeans", "opencv_nlm"])
    peer_frames: int = 24  # >= 6
    threads: int = 2
    allow_untrained: bool = False
    file_frames: int = 96  # frames of the clip `stream-denoise denoise` is timed on


def run(s: SpeedSettings, results: Path, cache: Path, command: str) -> dict:
    results.mkdir(parents=True, exist_ok=True)
    refs, skipped = models.resolve_many(s.models, cache, s.allow_untrained)
    doc: dict = {"meta": {**machine_info(), "command": command}, "settings": asdict(s), "peak": peak(s.threads),
                 "gpu": gpu_info(), "skipped_models": skipped, "runs": [], "peers": [], "skipped": []}
    backends = list(s.backends) + (["cuda", "tensorrt"] if doc["gpu"]["available"] else [])
    out_path = results / "speed.json"
    for w, h in s.resolutions:
        encoded, noisy = source_clip(w, h, max(s.frames + s.warmup + 4, s.peer_frames))
        long_clip = source_clip(w, h, s.file_frames)[0] if "onnxruntime" in backends else b""
        for backend in backends:
            for mname, ref in refs.items():
                try:
                    r = time_model(ref, backend, encoded, s)
                except Exception as exc:  # noqa: BLE001 - a missing backend/GPU is a reported skip
                    doc["skipped"].append({"backend": backend, "model": mname, "resolution": [w, h],
                                           "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
                    log.info("speed %s/%s %dx%d skipped: %s", backend, mname, w, h, doc["skipped"][-1]["reason"])
                    continue
                pk = doc["peak"]
                r.update(resolution=[w, h], peak_fraction_measured=r["gflops"] / pk["measured_gflops"],
                         peak_fraction_nominal=r["gflops"] / pk["nominal_gflops"] if pk["nominal_gflops"] else None)
                if backend == "onnxruntime":
                    r["pipeline"] = time_pipeline(ref, encoded, s)
                    r["denoise_file"] = time_denoise_file(ref, long_clip, s)
                    log.info("pipeline %s %dx%d: %.1f fps, live e2e p99 %.0f ms", mname, w, h,
                             r["pipeline"]["fps"], r["pipeline"]["live_e2e_p99_ms"])
                doc["runs"].append(r)
                log.info("speed %s/%s %dx%d: %.1f fps (infer %.1f ms)", backend, mname, w, h, r["fps"],
                         r["stages"]["infer"]["median_ms"])
                out_path.write_text(json.dumps(doc, indent=1))
        for pname in s.peers:
            try:
                entry = time_peer(pname, noisy[: s.peer_frames], s.threads)
            except RuntimeError as exc:
                entry = {"peer": pname, "label": peers.PEERS[pname].label, "params": {}, "skipped": str(exc)[:200]}
            doc["peers"].append(entry | {"resolution": [w, h]})
            out_path.write_text(json.dumps(doc, indent=1))
    out_path.write_text(json.dumps(doc, indent=1))
    return doc


def source_clip(w: int, h: int, n: int) -> tuple[bytes, np.ndarray]:
    """``n`` frames of bikes.mp4 resized to (w, h) with Gaussian sigma 30 noise: (H.264 bytes, RGB frames)."""
    import av
    import cv2

    from stream_denoise.noise import CONDITIONS, add_noise

    from .clips import load_clean

    clean = load_clean("bikes", n)
    frames = np.stack([cv2.resize(clean[i % len(clean)], (w, h), interpolation=cv2.INTER_LINEAR) for i in range(n)])
    noisy = add_noise(frames, CONDITIONS["gaussian30"], 0)
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.codec_context.options = {"preset": "veryfast", "crf": "18", "bf": "0"}
        for img in noisy:
            out.mux(st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(st.encode(None))
    return buf.getvalue(), noisy


def _stats(v: list[float]) -> dict:
    a = np.asarray(v) * 1000
    return {"median_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def time_model(ref: models.ModelRef, backend: str, encoded: bytes, s: SpeedSettings) -> dict:
    import av

    from stream_denoise.config import PublishConfig
    from stream_denoise.frame import Frame
    from stream_denoise.publish import Publisher
    from stream_denoise.subscribe import Subscriber

    den = models.create_denoiser(ref.path, backend, s.threads)
    t: dict[str, list[float]] = {k: [] for k in STAGES}
    try:
        with Publisher(PublishConfig(endpoint="tcp://127.0.0.1:*", sndhwm=100)) as pub, \
                Subscriber(pub.endpoint, rcvhwm=100, timeout_s=5) as sub, av.open(io.BytesIO(encoded)) as cont:
            _join(pub, sub)
            stream = cont.streams.video[0]
            stream.thread_type = "SLICE"
            frames = cont.decode(stream)
            done, t_loop, i = 0, 0.0, 0
            while done < s.warmup + s.frames:
                t0 = time.perf_counter()
                vf = next(frames, None)
                if vf is None:
                    break
                img = vf.to_ndarray(format="rgb24")
                t1 = time.perf_counter()
                outs = den.push(Frame(img, i, i / 25, time.time(), "bench"))
                t2 = time.perf_counter()
                i += 1
                if len(outs) != 1:
                    continue  # filling the look-ahead
                if not pub.send(outs[0]) or sub.recv(timeout=5) is None:
                    raise RuntimeError("publish: the subscriber received nothing")
                t3 = time.perf_counter()
                done += 1
                if done <= s.warmup:
                    continue
                for k, v in (("decode", t1 - t0), ("pre", den.times.pre), ("infer", den.times.infer),
                             ("post", den.times.post), ("publish", t3 - t2), ("e2e", (t1 - t0) + (t3 - t1))):
                    t[k].append(v)
                t_loop += t3 - t0
        if not t["e2e"]:
            raise RuntimeError("no frame was timed (clip too short?)")
        stride = den.backend.stride
        h, w = img.shape[:2]
        padded = -(-h // stride) * stride * (-(-w // stride) * stride)
        batch = batch_throughput(den) if den.backend.capabilities.lanes > 1 else None
    finally:
        den.backend.close()
    macs = models.macs_per_pixel(ref.path)
    infer = float(np.median(t["infer"]))
    return {"backend": backend, "model": ref.name, "untrained": ref.untrained, "frames": len(t["e2e"]),
            "lanes": den.backend.capabilities.lanes, "infer_batch_fps": batch,
            "fps": len(t["e2e"]) / t_loop, "lookahead_frames": den.latency_frames,
            "stages": {k: _stats(v) for k, v in t.items()}, "macs_per_pixel": macs,
            "gflops": 2 * macs * padded / infer / 1e9}


def batch_throughput(den, repeats: int = 12) -> float:  # type: ignore[no-untyped-def]
    """Inference alone, frames per second, on batches of ``lanes`` windows (the last input, repeated):
    what the backend delivers when frames are waiting, as in a file or a busy multi-camera process."""
    b = den.backend
    x = np.repeat(den._input[:1], b.lanes, axis=0)
    b.infer(x)
    t0 = time.perf_counter()
    for _ in range(repeats):
        b.infer(x)
    return repeats * b.lanes / (time.perf_counter() - t0)


def time_pipeline(ref: models.ModelRef, encoded: bytes, s: SpeedSettings, lanes: int | None = None) -> dict:
    """The real overlapped pipeline (file source -> denoiser -> ZeroMQ) on the clip: fps flat out,
    and decode->publish latency with the file paced at 25 fps (live-like)."""
    import tempfile
    import threading

    from stream_denoise.backends.onnx_cpu import OnnxRuntimeOptions
    from stream_denoise.config import ModelConfig, PublishConfig, RunConfig, SourceConfig
    from stream_denoise.pipeline import Pipeline
    from stream_denoise.subscribe import Subscriber

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mkv"
        clip.write_bytes(encoded)
        for mode, realtime in (("flat", False), ("live", True)):
            endpoint = f"ipc://{tmp}/pub-{mode}"
            n = s.frames * 3 if not realtime else s.frames * 2
            cfg = RunConfig(source=SourceConfig(uri=str(clip), loop=True, realtime=realtime),
                            model=ModelConfig(model=str(ref.path), backend="onnxruntime", threads=s.threads,
                                              onnxruntime=OnnxRuntimeOptions(lanes=lanes)),
                            publish=PublishConfig(endpoint=endpoint, sndhwm=1000), max_frames=n,
                            status_interval_s=3600)
            arrivals: list[float] = []
            with Subscriber(endpoint, rcvhwm=1000) as sub, Pipeline(cfg) as pipe:
                stop = threading.Event()

                def drain() -> None:
                    while not stop.is_set():
                        if sub.recv(timeout=0.2) is not None:
                            arrivals.append(time.perf_counter())

                t = threading.Thread(target=drain)
                t.start()
                time.sleep(0.3)  # ZeroMQ's slow joiner: let the subscription reach the publisher
                t0 = time.perf_counter()
                m = pipe.run()
                wall = time.perf_counter() - t0
                time.sleep(0.3)
                stop.set()
                t.join(timeout=10)
            e2e = np.asarray(m.latency["e2e"].values()[s.warmup:]) * 1000
            if mode == "flat":  # steady state: arrivals after the warm-up frames
                steady = arrivals[s.warmup:]
                fps = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 2 else m.frames_out / wall
                t = pipe.denoiser.times
                stage_ms = {k: 1000 * t.total[k] / t.frames for k in ("pre", "infer", "post")}
                out.update(fps=fps, frames=m.frames_out, received=len(arrivals), lanes=pipe.denoiser.backend.lanes,
                           infer_only_fps=t.fps("infer"), mean_batch=t.frames / max(1, t.calls),
                           stage_ms_per_frame=stage_ms,
                           publish_ms_per_frame=1000 * float(np.mean(m.latency["publish"].values())))
            else:
                out.update(live_e2e_p50_ms=float(np.median(e2e)), live_e2e_p99_ms=float(np.percentile(e2e, 99)),
                           live_dropped_source=pipe.source.stats.frames_dropped)
    out["fps_vs_infer"] = out["fps"] / out["infer_only_fps"]
    return out


def time_denoise_file(ref: models.ModelRef, encoded: bytes, s: SpeedSettings) -> dict:
    """``stream-denoise denoise`` (file to file, lossless .mkv): frames / wall time, model loading included."""
    import tempfile

    from stream_denoise.config import ModelConfig
    from stream_denoise.offline import denoise_file

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.mkv", Path(tmp) / "out.mkv"
        src.write_bytes(encoded)
        t0 = time.perf_counter()
        n = denoise_file(src, dst, ModelConfig(model=str(ref.path), backend="onnxruntime", threads=s.threads))
        wall = time.perf_counter() - t0
    log.info("denoise %s: %d frames in %.1f s (%.1f fps)", ref.name, n, wall, n / wall)
    return {"frames": n, "seconds": wall, "fps": n / wall}


def _join(pub, sub, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Send probe frames until the subscriber gets one (ZeroMQ's slow joiner), then drain."""
    from stream_denoise.frame import Frame

    probe = Frame(np.zeros((8, 8, 3), np.uint8), 0, None, time.time(), "bench")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.send(probe)
        if sub.recv(timeout=0.05) is not None:
            while sub.recv(timeout=0.05) is not None:
                pass
            return
    raise RuntimeError(f"subscriber never connected to {pub.endpoint}")


def time_peer(name: str, noisy: np.ndarray, threads: int) -> dict:
    """fps of one peer (its QUICK_GRIDS setting) on these frames. ffmpeg: startup-corrected from an
    n/2-frame and an n-frame run; OpenCV: per denoised frame with a full 5-frame window."""
    peer = peers.PEERS[name]
    p = peers.points(peers.QUICK_GRIDS[name])[0]
    entry: dict = {"peer": name, "label": peer.label, "params": p}
    why = peer.available()
    if why:
        return entry | {"skipped": why}
    n = len(noisy)
    if name == "opencv_nlm":
        k = min(3, n)
        t0 = time.perf_counter()
        peers.opencv_nlm(noisy[: max(5, k)], p, 30.0, threads, targets=k)
        return entry | {"frames": k, "fps": k / (time.perf_counter() - t0)}
    half = max(n // 2, 5)  # atadenoise (s=9) hangs below s/2 frames
    _, th = peer.timed(noisy[:half], p, 30.0, threads)
    _, tn = peer.timed(noisy, p, 30.0, threads)
    fps = (n - half) / (tn - th) if n > half and tn > th else n / tn
    return entry | {"frames": n, "fps": fps, "fps_with_startup": n / tn}


def peak(threads: int, n: int = 2048, repeats: int = 8) -> dict:
    """Measured fp32 peak (fastest of ``repeats`` n x n matmuls, numpy or torch on ``threads`` threads)
    and nominal peak."""
    a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    cands: dict[str, Callable[[], object]] = {"numpy matmul": lambda: a @ b}
    try:
        import torch

        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        cands[f"torch {torch.__version__} mm ({threads} threads)"] = lambda: torch.mm(ta, tb)
    except ImportError:
        pass
    times = {}
    for name, mm in cands.items():
        mm()
        times[name] = min(_time(mm) for _ in range(repeats))
    lib = min(times, key=times.__getitem__)
    best = times[lib]
    cpu = cpu_info()
    lanes = 16 if "avx512f" in cpu["flags"] else 8 if "avx2" in cpu["flags"] else 4
    nominal = threads * cpu["ghz"] * 2 * lanes * 2
    return {"measured_gflops": 2 * n**3 / best / 1e9,
            "measured_how": f"fastest of {repeats} {n}x{n} fp32 matmuls with numpy and torch: {lib}",
            "nominal_gflops": nominal,
            "nominal_how": f"{threads} cores x {cpu['ghz']:.2f} GHz (/proc/cpuinfo 'cpu MHz') x 2 FMA units x "
                           f"{lanes} fp32 lanes ({'AVX-512' if lanes == 16 else 'AVX2' if lanes == 8 else 'SSE'}) x 2 FLOP/FMA"}


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gpu_info() -> dict:
    try:
        import torch

        if torch.cuda.is_available():
            return {"available": True, "name": torch.cuda.get_device_name(0)}
    except ImportError:
        pass
    return {"available": False, "note": "no CUDA GPU visible: the GPU / TensorRT table is skipped"}
