"""python -m benchmarks.gpu: the GPU runtime on a lent GPU (the ``cuda`` backend; TensorRT where installed).

What it measures, per model (fp16, channels-last, CUDA graphs; ``--precision`` to change):

* **agreement**: the GPU's output against ONNX Runtime fp32 on the same windows (max abs on [0, 1]);
* **network**: the captured graph alone, replayed on a static input: frames/s at each ``--sizes``, and
  the fraction of the GPU's measured fp16 matrix rate it reaches (2 x MAC/pixel x pixels x fps);
* **one stream**: ``GpuWindowRunner.push`` from uint8 host frames to uint8 host frames (upload once,
  window kept on the GPU, post-processing there, one copy back): frames/s and p50 / p99 latency;
* **many streams** at ``--stream-size``: S cameras batched into one network run per tick
  (``denoise_many``) against S separate runners (one graph each, run one after another), total
  frames/s; then the most cameras that hold 30 fps each when batched (``--max-streams``).

Frames come from host memory (no decoding: that is the CPU's part, timed by ``benchmarks speed``).
Results go to benchmarks/results/gpu.json; ``python -m benchmarks report`` renders them.
``--device cpu`` runs the same code on the CPU at tiny sizes (to check the script, not to measure).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from . import RESULTS_DIR
from .report import machine_info

log = logging.getLogger("benchmarks.gpu")

DATASHEET = {"NVIDIA H100 80GB HBM3": 989.4, "NVIDIA H200": 989.4}  # dense fp16 tensor TFLOP/s (SXM)


def _size(v: str) -> tuple[int, int]:
    w, h = v.lower().split("x")
    return int(w), int(h)


def _ints(v: str) -> list[int]:
    return [int(x) for x in v.split(",") if x]


def _channels(backend) -> int:  # type: ignore[no-untyped-def]
    """The network's input channels (``planes.Layout``)."""
    from stream_denoise.planes import Layout

    return Layout.of(backend).channels


def _stats_ms(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def _frames(n: int, w: int, h: int, seed: int = 0) -> list[np.ndarray]:
    """n distinct (H, W, 3) uint8 frames (a drifting gradient with noise): content does not change the
    arithmetic, but distinct frames keep every upload honest."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx * 200 / w, yy * 200 / h, np.full((h, w), 90, np.float32)], -1) + 25
    return [np.clip(np.roll(base, 3 * i, axis=1) + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            for i in range(n)]


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        from stream_denoise.backends.cuda_windows import require_cuda

        self.a = a
        self.form = a.forms[0]
        if a.device == "cuda":
            self.torch = require_cuda()
        else:
            import torch

            self.torch = torch

    def sync(self) -> None:
        if self.a.device == "cuda":
            self.torch.cuda.synchronize()

    def timed(self, fn, seconds: float, least: int = 5) -> list[float]:  # type: ignore[no-untyped-def]
        """Per-call seconds of ``fn`` (which must leave the GPU idle, or is followed by a sync) for
        about ``seconds`` after two warm calls."""
        fn(), fn()
        self.sync()
        out: list[float] = []
        end = time.perf_counter() + seconds
        while len(out) < least or time.perf_counter() < end:
            t0 = time.perf_counter()
            fn()
            self.sync()
            out.append(time.perf_counter() - t0)
        return out

    def peak(self) -> dict:
        """The fp16 matrix rate this GPU reaches (8192^3 products on random data, median of 10)."""
        torch = self.torch
        if self.a.device != "cuda":
            return {"tflops_fp16_measured": None}
        n = 8192
        a = torch.randn(n, n, device="cuda", dtype=torch.float16)
        b = torch.randn(n, n, device="cuda", dtype=torch.float16)
        t = self.timed(lambda: a @ b, 2.0, least=10)  # the first second brings the clocks up
        return {"tflops_fp16_measured": 2 * n**3 / float(np.percentile(t, 10)) / 1e12, "matmul": f"{n}^3 fp16, 10th percentile time",
                "tflops_fp16_datasheet": DATASHEET.get(torch.cuda.get_device_name(0))}

    def backend(self, model: str):  # type: ignore[no-untyped-def]
        from stream_denoise import model_files
        from stream_denoise.backends.torch_model import TorchBackend

        return TorchBackend(str(model_files.resolve(model, ".pt")), self.a.device, threads=None, precision=self.a.precision,
                            form=self.form)

    def agreement(self, model: str) -> dict:
        """Max abs difference (on [0, 1]) of the GPU backend (host path and window runner, in uint8
        levels) against ONNX Runtime fp32 on the same windows."""
        from stream_denoise import model_files
        from stream_denoise.backends.onnx_cpu import OnnxRuntimeBackend
        from stream_denoise.export.to_onnx import export_onnx
        from stream_denoise.denoiser import Denoiser
        from stream_denoise.planes import Layout, window_input

        w, h = self.a.check_size
        frames = _frames(5, w, h, seed=3)
        ort = OnnxRuntimeBackend(export_onnx(model_files.resolve(model, ".pt"), Path(self.a.tmp) / f"{model}.onnx"), threads=None)
        ref_den = Denoiser(ort)
        ref = ref_den.denoise_window(frames)
        gpu = self.backend(model)
        x = window_input(np.stack(frames)[None], Layout.of(gpu),
                         ref_den.noise.sigmas if ref_den.noise is not None else None)
        host = float(np.abs(gpu.infer(x) - ort.infer(x)).max())
        runner = gpu.window_runner()
        for i, f in enumerate(frames):
            runner.upload(i, f, ref_den.noise.sigmas if ref_den.noise is not None else None)
        levels = np.abs(runner.denoise(list(range(5))).astype(np.int16) - ref)
        gpu.close()
        return {"size": f"{w}x{h}", "max_abs_infer": host, "max_levels_frames": int(levels.max()),
                "mean_levels_frames": float(levels.mean())}

    def network(self, model: str, macs: float, peak: float | None) -> list[dict]:
        rows = []
        for w, h in self.a.sizes:
            backend = self.backend(model)
            ex = backend.executor
            x = ex.input((1, _channels(backend), h, w))
            x.copy_(self.torch.rand(x.shape, device=x.device).to(x.dtype))
            t = self.timed(ex.run, self.a.seconds)
            fps = 1 / float(np.median(t))
            tflops = 2 * macs * w * h * fps / 1e12
            rows.append({"size": f"{w}x{h}", "fps": fps, **_stats_ms(t), "tflops": tflops,
                         "fraction_of_peak": tflops / peak if peak else None, "graph": ex.graph_active})
            log.info("%s (%s) network %dx%d: %.0f fps (%.2f ms), %.0f TFLOP/s", model, self.form, w, h, fps, 1000 / fps, tflops)
            backend.close()
        return rows

    def profile(self, model: str) -> list[dict]:
        """Where the network's time goes at the first --sizes (eager forward under the profiler):
        the 12 kernels with the most GPU time, in percent of the total."""
        if self.a.device != "cuda":
            return []
        from torch.profiler import ProfilerActivity, profile

        w, h = self.a.sizes[0]
        backend = self.backend(model)
        ex = backend.executor
        x = ex.input((1, _channels(backend), h, w))
        with ex.on_stream():
            for _ in range(3):
                ex.runner.forward(ex._full)
        self.sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof, ex.on_stream():
            for _ in range(5):
                ex.runner.forward(ex._full)
            self.sync()
        rows = [(e.key, e.device_time_total) for e in prof.key_averages()]
        total = sum(t for _, t in rows) or 1.0
        backend.close()
        del x
        return [{"kernel": k[:90], "percent": 100 * t / total, "ms_per_frame": t / 5 / 1000}
                for k, t in sorted(rows, key=lambda r: -r[1])[:12]]

    def one_stream(self, model: str) -> list[dict]:
        rows = []
        for w, h in self.a.sizes:
            backend = self.backend(model)
            runner = backend.window_runner()
            frames = _frames(8, w, h)
            i = iter(range(10**9))
            t = self.timed(lambda: runner.push(frames[next(i) % len(frames)]), self.a.seconds)
            rows.append({"size": f"{w}x{h}", "fps": len(t) / sum(t), **_stats_ms(t)})
            log.info("%s (%s) one stream %dx%d: %.0f fps, p50 %.2f / p99 %.2f ms", model, self.form, w, h, rows[-1]["fps"],
                     rows[-1]["p50_ms"], rows[-1]["p99_ms"])
            backend.close()
        return rows

    def streams(self, model: str, counts: list[int], separate: bool) -> list[dict]:
        """Total frames/s of S cameras at --stream-size: batched (one run per tick) and, if
        ``separate``, S runners one after another."""
        w, h = self.a.stream_size
        frames = _frames(8, w, h, seed=5)
        k = 5
        rows = []
        for s in counts:
            backend = self.backend(model)
            runner = backend.window_runner()
            runner.reserve(s * (k + 1))
            tick = iter(range(10**9))

            def step() -> None:
                t = next(tick) + k
                for c in range(s):
                    runner.upload((c, t), frames[(t + c) % len(frames)])
                    if t == k:  # first tick: the window's older frames too
                        for j in range(1, k):
                            runner.upload((c, t - j), frames[(t - j + c) % len(frames)])
                runner.denoise_many([[(c, t - j) for j in range(k - 1, -1, -1)] for c in range(s)])

            try:
                tb = self.timed(step, self.a.seconds)
            except Exception as exc:  # noqa: BLE001 - out of memory at large S is a result, not a crash
                log.warning("%d streams batched: %s", s, str(exc).splitlines()[0][:160])
                rows.append({"streams": s, "error": str(exc).splitlines()[0][:160]})
                backend.close()
                self.torch.cuda.empty_cache() if self.a.device == "cuda" else None
                break
            row = {"streams": s, "batched_fps": s / float(np.median(tb)), "tick": _stats_ms(tb)}
            backend.close()
            if separate:
                runners = []
                for _ in range(s):
                    b = self.backend(model)
                    runners.append((b, b.window_runner()))
                order = iter(range(10**9))

                def round_robin() -> None:
                    n = next(order)
                    for c, (_, r) in enumerate(runners):
                        r.push(frames[(n + c) % len(frames)])

                ts = self.timed(round_robin, self.a.seconds)
                row["separate_fps"] = s / float(np.median(ts))
                for b, _ in runners:
                    b.close()
            row["holds_30fps_each"] = row["batched_fps"] >= 30 * s
            log.info("%s (%s) %d streams %dx%d: batched %.0f fps total%s", model, self.form, s, w, h, row["batched_fps"],
                     f", separate {row['separate_fps']:.0f}" if separate else "")
            rows.append(row)
            if self.a.device == "cuda":
                self.torch.cuda.empty_cache()
        return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="base,lite")
    p.add_argument("--precision", default="fp16", choices=["fp16", "fp32"])
    p.add_argument("--sizes", type=lambda v: [_size(x) for x in v.split(",")], default="1920x1080,3840x2160")
    p.add_argument("--stream-size", type=_size, default="1280x720")
    p.add_argument("--streams", type=_ints, default="1,4,16")
    p.add_argument("--max-streams", type=_ints, default="32,64,128", help="batched only (first model)")
    p.add_argument("--forms", type=lambda v: v.split(","), default="fused",
                   help="GPU forms of the network (plain,padded,shuffle,fused; see stream_denoise.model.gpu_form)")
    p.add_argument("--check-size", type=_size, default="640x360", help="frame size of the ONNX Runtime comparison")
    p.add_argument("--seconds", type=float, default=1.5, help="timed seconds per configuration")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tmp", default="/tmp")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu.json")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from stream_denoise.errors import BackendUnavailable

    try:
        bench = Bench(a)
    except BackendUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch = bench.torch
    doc: dict = {"machine": machine_info(), "command": "python -m benchmarks.gpu " + " ".join(sys.argv[1:] if argv is None else argv),
                 "precision": a.precision, "device": a.device,
                 "stream_size": "x".join(map(str, a.stream_size)), "models": {}}
    if a.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        doc["gpu"] = {"name": props.name, "sms": props.multi_processor_count, "memory_gib": props.total_memory / 2**30,
                      "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    doc["peak"] = bench.peak()
    log.info("peak: %s", doc["peak"])
    peak = doc["peak"].get("tflops_fp16_measured")
    from stream_denoise import model_files
    from stream_denoise.model import load_model

    for i, model in enumerate(a.models.split(",")):
        m = load_model(model_files.resolve(model, ".pt"))
        macs, params = m.macs_per_pixel(), m.param_count()
        r: dict = {"macs_per_pixel": macs, "params": params, "forms": {}}
        doc["models"][model] = r
        for form in a.forms:
            bench.form = form
            f: dict = {"agreement": bench.agreement(model)}
            log.info("%s (%s) agreement with ONNX Runtime fp32: %s", model, form, f["agreement"])
            r["forms"][form] = f
            f["network"] = bench.network(model, macs, peak)
            if i == 0:
                try:
                    f["profile"] = bench.profile(model)
                except Exception as exc:  # noqa: BLE001 - the profiler is a nicety
                    log.warning("profiler: %s", exc)
                for k in f.get("profile", [])[:6]:
                    log.info("  %5.1f%%  %.3f ms  %s", k["percent"], k["ms_per_frame"], k["kernel"][:70])
            f["one_stream"] = bench.one_stream(model)
            f["streams"] = bench.streams(model, a.streams, separate=True)
            if i == 0 and a.max_streams:
                f["max_streams"] = bench.streams(model, a.max_streams, separate=False)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(doc, indent=1))  # after each form: a later failure keeps these
    log.info("wrote %s", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
