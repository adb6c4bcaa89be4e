"""Live self-adaptation (`run --adapt`): PSNR of the published stream over time while the noise changes.

    python -m benchmarks.adapt [--clips bikes,carphone] [--size 320x180] [--phase-s 150] [--minutes 1]

Per clip: the first ``T`` frames of the held-out clip (cropped to ``--size``) with camera noise at
ISO ~400 (``NoiseSpec("camera", photons=1000)``), repeated for ``--phase-s`` seconds, then the same
frames at ISO ~3200 (photons 125) for as long again, one frozen noise realisation per phase, in one
lossless FFV1 file. ``run --adapt`` (lite on ONNX Runtime, defaults of ``[adapt]`` except the budget
and the sampling pace below) reads it paced at 25 fps like a camera and publishes over ZeroMQ to a
subscriber on this host, which scores every frame against the clean clip. Reported: PSNR over time
(mean per 5 s), the generation of each frame, when each swap happened, the zero-shot PSNR of the
shipped model on each phase (the same frames denoised offline), frames published and received, seq
gaps, frames dropped at the source and between stages, the output frame rate per 5 s, and the
frame rate and inference time while a training run is in progress against while none is.
Writes benchmarks/results/adapt.json and adapt.png (PSNR and generation against time) and rewrites
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from . import RESULTS_DIR, ROOT

FPS = 25
T = 48  # frames of the clip, repeated
PHASES = (("ISO 400", 1000.0, 2.0), ("ISO 3200", 125.0, 3.5))  # (name, photons at full white, read noise)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / max(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2), 1e-10)))


def make_stream(clean: np.ndarray, path: Path, phase_s: float, seed: int) -> list[np.ndarray]:
    """Write the two-phase noisy stream; returns the noisy clip of each phase."""
    import av

    from stream_denoise.noise import NoiseSpec, add_noise

    noisy = [add_noise(clean, NoiseSpec("camera", photons=ph, read_noise=rn), seed + i)
             for i, (_, ph, rn) in enumerate(PHASES)]
    per_phase = int(phase_s * FPS)
    h, w = clean.shape[1:3]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "bgr0"
        for clip in noisy:
            for i in range(per_phase):
                out.mux(stream.encode(av.VideoFrame.from_ndarray(clip[i % T], format="rgb24")))
        out.mux(stream.encode(None))
    return noisy


def zero_shot(noisy: np.ndarray, clean: np.ndarray) -> float:
    """PSNR of the shipped lite on a phase's frames (the stream's own Denoiser, offline)."""
    from stream_denoise.backends import create_backend
    from stream_denoise.config import ModelConfig
    from stream_denoise.denoiser import Denoiser

    backend = create_backend(ModelConfig(model="lite", backend="onnxruntime"))
    try:
        d = Denoiser(backend)
        scores = [psnr(d.denoise_window([noisy[(i + k) % T] for k in range(-2, 3)]), clean[i]) for i in range(T)]
    finally:
        backend.close()
    return float(np.mean(scores))


def run_clip(name: str, size: tuple[int, int], phase_s: float, minutes: float, work: Path) -> dict:
    from stream_denoise.config import AdaptConfig, ModelConfig, PublishConfig, RunConfig, SourceConfig
    from stream_denoise.pipeline import Pipeline
    from stream_denoise.subscribe import Received, Subscriber

    from .clips import load_clean

    clean = load_clean(name, T, crop=size)
    path = work / f"{name}.mkv"
    noisy = make_stream(clean, path, phase_s, seed=7)
    zs = [zero_shot(n, clean) for n in noisy]
    endpoint = f"ipc://{work / 'pub'}"
    cfg = RunConfig(source=SourceConfig(uri=str(path), name=f"bench-{name}", realtime=True),
                    model=ModelConfig(model="lite", backend="onnxruntime"),
                    publish=PublishConfig(endpoint=endpoint, sndhwm=10000), status_interval_s=10.0,
                    adapt=AdaptConfig(dir=work / "adapted", minutes=minutes, sample_every_s=2.0))
    per_phase = int(phase_s * FPS)
    rows: list[tuple[float, int, int, float, int]] = []  # (received at, index, seq, psnr, generation)
    with Subscriber(endpoint, rcvhwm=100000) as sub, Pipeline(cfg) as pipe:
        time.sleep(0.3)
        done = threading.Event()

        def score(msg: Received) -> None:
            ref = clean[(msg.index % per_phase) % T]
            rows.append((msg.received_at, msg.index, msg.seq, psnr(msg.image[..., ::-1], ref), msg.header["generation"]))

        def receive() -> None:
            while not done.is_set():
                if (msg := sub.recv(timeout=0.2)) is not None:
                    score(msg)
            while (msg := sub.recv(timeout=1.0)) is not None:
                score(msg)

        def sample() -> None:  # once a second: is a run training, and the last second's inference times
            while not done.wait(1.0):
                infer = pipe.metrics.latency["infer"].values()[-FPS:]
                samples.append((time.time() - t0, pipe.snapshot().get("adapt_training", 0),
                                float(np.median(infer)) * 1000 if infer else float("nan")))

        samples: list[tuple[float, int, float]] = []
        t = threading.Thread(target=receive)
        t.start()
        t0 = time.time()
        sampler = threading.Thread(target=sample)
        sampler.start()
        metrics = pipe.run()
        done.set()
        t.join(timeout=60)
        sampler.join(timeout=5)
        snap = pipe.snapshot()
    rows.sort(key=lambda r: r[2])
    times = np.array([r[0] - t0 for r in rows])
    seq = [r[2] for r in rows]
    gens = [r[4] for r in rows]
    phase_of = [0 if r[1] < per_phase else 1 for r in rows]
    swaps = [{"t_s": round(float(times[i]), 1), "generation": gens[i], "phase": PHASES[phase_of[i]][0]}
             for i in range(1, len(rows)) if gens[i] != gens[i - 1]]
    bins: list[dict] = []
    for b0 in np.arange(0, times.max() + 5, 5.0):
        sel = [i for i in range(len(rows)) if b0 <= times[i] < b0 + 5]
        if sel:
            bins.append({"t_s": float(b0), "psnr": round(float(np.mean([rows[i][3] for i in sel])), 2),
                         "generation": max(gens[i] for i in sel), "fps": round(len(sel) / 5.0, 1),
                         "phase": int(np.bincount([phase_of[i] for i in sel]).argmax())})
    summary = []
    for p, (label, _, _) in enumerate(PHASES):
        by_gen: dict[int, list[float]] = {}
        for r, ph in zip(rows, phase_of):
            if ph == p:
                by_gen.setdefault(r[4], []).append(r[3])
        summary.append({"phase": label, "zero_shot_psnr": round(zs[p], 2),
                        "psnr_by_generation": {str(g): round(float(np.mean(v)), 2) for g, v in sorted(by_gen.items())},
                        "frames_by_generation": {str(g): len(v) for g, v in sorted(by_gen.items())}})
    for b in bins:  # the share of the bin's seconds a training run was in progress
        inside = [tr for ts, tr, _ in samples if b["t_s"] <= ts < b["t_s"] + 5]
        b["training"] = round(float(np.mean(inside)), 2) if inside else None
    full_bins = [b["fps"] for b in bins[1:-1]]
    load = {}
    for state, label in ((1, "training"), (0, "idle")):
        fps = [b["fps"] for b in bins[1:-1] if b["training"] == state]
        infer = [ms for _, tr, ms in samples if tr == state and np.isfinite(ms)]
        load[label] = {"bins": len(fps), "fps_min": min(fps, default=None), "fps_median": float(np.median(fps)) if fps else None,
                       "infer_ms_median": round(float(np.median(infer)), 1) if infer else None}
    return {"clip": name, "size": list(size), "phase_s": phase_s, "frames_per_phase": per_phase,
            "published": metrics.frames_out, "received": len(rows),
            "seq_gaps": int(sum(b - a - 1 for a, b in zip(seq, seq[1:]) if b != a + 1)),
            "dropped_source": snap.get("source_frames_dropped"), "dropped_queue": snap.get("dropped_queue"),
            "dropped_publish": snap.get("publish_dropped"), "fps_per_5s_min_median": [min(full_bins), float(np.median(full_bins))], "while_training": load,
            "adapt": {k: v for k, v in snap.items() if k.startswith("adapt_")}, "swaps": swaps, "phases": summary,
            "bins": bins}


def plot(results: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(9, 3.2 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        t = [b["t_s"] for b in r["bins"]]
        ax.plot(t, [b["psnr"] for b in r["bins"]], color="tab:blue", label="published PSNR (mean per 5 s)")
        for p, ph in enumerate(r["phases"]):
            x0, x1 = p * r["phase_s"], (p + 1) * r["phase_s"]
            ax.hlines(ph["zero_shot_psnr"], x0, x1, colors="gray", linestyles="dotted",
                      label="shipped lite, zero-shot" if p == 0 else None)
        ax.axvline(r["phase_s"], color="k", linestyle="--", linewidth=0.8)
        ax.text(r["phase_s"], ax.get_ylim()[1], " ISO 400 -> 3200", va="top", fontsize=8)
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{r['clip']} {r['size'][0]}x{r['size'][1]}, run --adapt at 25 fps")
        g = ax.twinx()
        g.step(t, [b["generation"] for b in r["bins"]], where="post", color="tab:red", label="generation")
        g.set_ylabel("model generation", color="tab:red")
        g.set_yticks(range(0, max(b["generation"] for b in r["bins"]) + 2))
        lines = ax.get_legend_handles_labels()[0] + g.get_legend_handles_labels()[0]
        ax.legend(lines, [ln.get_label() for ln in lines], loc="lower left", fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.adapt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", default="bikes,carphone")
    p.add_argument("--size", default="320x180", help="WxH centre crop")
    p.add_argument("--phase-s", type=float, default=150.0, help="seconds of each noise condition")
    p.add_argument("--minutes", type=float, default=1.0, help="[adapt] minutes: budget of one training run")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "adapt.json")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .report import machine_info, write

    w, h = (int(v) for v in a.size.lower().split("x"))
    meta = machine_info() | {"command": "python -m benchmarks.adapt " + shlex.join(sys.argv[1:] if argv is None else argv)}
    results = []
    for name in a.clips.split(","):
        with tempfile.TemporaryDirectory(prefix="bench-adapt-") as work:
            results.append(run_clip(name, (w, h), a.phase_s, a.minutes, Path(work)))
        logging.info("%s: %s", name, json.dumps(results[-1]["phases"]))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    png = plot(results, a.out.with_suffix(".png"))
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "minutes": a.minutes, "runs": results}, indent=1))
    tmp.replace(a.out)
    write(a.out.parent, ROOT / "BENCHMARKS.md" if a.out.parent == RESULTS_DIR else a.out.parent / "BENCHMARKS.md")
    logging.info("wrote %s, %s and BENCHMARKS.md", a.out, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
