"""python -m benchmarks {quality,speed,pictures,report,all} [--quick] [options]

Every subcommand rewrites BENCHMARKS.md from the result files present. ``all`` regenerates every
number and picture. ``--quick`` is the CI smoke test: one tiny clip crop, two conditions, a few
steps of fine-tuning, one-point peer grids, BM4D on one tiny frame, one small resolution; its
results go to benchmarks/results/quick/ so they never overwrite a full run.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from . import CACHE_DIR, RESULTS_DIR, ROOT


def _size(v: str) -> tuple[int, int]:
    w, h = v.lower().split("x")
    return int(w), int(h)


def _list(v: str) -> list[str]:
    return [x for x in v.split(",") if x]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["quality", "speed", "pictures", "report", "all"])
    p.add_argument("--quick", action="store_true", help="CI smoke test (< 3 min on 2 cores); reports, no thresholds")
    p.add_argument("--results", type=Path, help="result directory (default benchmarks/results, quick: .../results/quick)")
    p.add_argument("--md", type=Path, help="markdown report (default BENCHMARKS.md; quick: RESULTS/BENCHMARKS.md)")
    p.add_argument("--cache", type=Path, default=CACHE_DIR, help="frozen noisy clips, crops, trained models")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--models", type=_list, help="zero-shot / speed models (default lite,base,lite-causal; names or .pt paths)")
    p.add_argument("--allow-untrained", action="store_true", help="stand in an untrained network for missing shipped models")
    g = p.add_argument_group("quality")
    g.add_argument("--clips", type=_list, help="bikes,carphone")
    g.add_argument("--conditions", type=_list, help="keys of stream_denoise.noise.CONDITIONS")
    g.add_argument("--frames", type=int, help="frames per clip (at most its length): recorded, then scored")
    g.add_argument("--recorded", type=int, help="frames of the recorded part (default half; 16 stay scored)")
    g.add_argument("--crop", type=_size, help="WxH centre crop of the clean clips")
    g.add_argument("--adapt-models", type=_list, help="models fine-tuned and trained supervised (default lite)")
    g.add_argument("--ft-minutes", type=float,
                   help="fine-tuning / supervised budget per clip x condition (default 3; the issue allows up to 10)")
    g.add_argument("--ft-steps", type=int, help="step cap of that budget (default 3000, as stream-denoise fine-tune)")
    g.add_argument("--no-supervised", dest="supervised", action="store_false",
                   help="fine-tune the adapt models only (skip the supervised upper bound: half the training time)")
    g.add_argument("--peers", type=_list, help="hqdn3d,atadenoise,nlmeans,opencv_nlm,bm4d")
    g.add_argument("--bm4d-frames", type=int, help="live frames BM4D denoises (0 skips BM4D)")
    g = p.add_argument_group("speed")
    g.add_argument("--backends", type=_list, help="onnxruntime,torch (cuda,tensorrt are added when a GPU is visible)")
    g.add_argument("--resolutions", type=lambda v: [_size(x) for x in _list(v)], help="640x360,1280x720,1920x1080")
    g.add_argument("--speed-frames", type=int, help="timed frames per configuration")
    return p


def _quality_settings(a: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .quality import QualitySettings

    s = QualitySettings(threads=a.threads, allow_untrained=a.allow_untrained)
    if a.quick:
        s = QualitySettings(clips=["carphone"], conditions=["gaussian30", "cctv"], frames=16, crop=(96, 80),
                            models=["lite"], adapt_models=["lite"], ft_minutes=0.25, ft_steps=4, quick_grids=True,
                            bm4d_frames=1, bm4d_crop=(48, 48), picture_crop=48, threads=a.threads, allow_untrained=True)
    for k in ("clips", "conditions", "frames", "recorded", "crop", "adapt_models", "ft_minutes", "ft_steps", "peers",
              "bm4d_frames"):
        if getattr(a, k) is not None:
            setattr(s, k, getattr(a, k))
    s.supervised = a.supervised
    if a.models is not None:
        s.models = a.models
    if s.bm4d_frames <= 0:
        s.peers = [p for p in s.peers if p != "bm4d"]
    return s


def _speed_settings(a: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .speed import SpeedSettings

    s = SpeedSettings(threads=a.threads, allow_untrained=a.allow_untrained)
    if a.quick:
        s = SpeedSettings(models=["lite"], resolutions=[(320, 180)], frames=6, warmup=1, peer_frames=8, file_frames=12,
                          threads=a.threads, allow_untrained=True)
    for k, attr in (("backends", "backends"), ("resolutions", "resolutions"), ("speed_frames", "frames"), ("models", "models")):
        if getattr(a, k) is not None:
            setattr(s, attr, getattr(a, k))
    return s


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = a.results or (RESULTS_DIR / "quick" if a.quick else RESULTS_DIR)
    md = a.md or (results / "BENCHMARKS.md" if a.quick else ROOT / "BENCHMARKS.md")
    command = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv)
    t0 = time.monotonic()
    os.environ.setdefault("STREAM_DENOISE_CACHE", str(a.cache))  # ONNX exports of .pt models go there
    from . import pictures, quality, report, speed

    if a.what in ("quality", "all"):
        qs = _quality_settings(a)
        if not a.quick:
            n = len(qs.clips) * len(qs.conditions) * len(qs.adapt_models) * (2 if qs.supervised else 1) * qs.ft_minutes
            logging.info("quality: training alone takes about %.0f min (--ft-minutes %g)", n, qs.ft_minutes)
        quality.run(qs, results, a.cache, command)
    if a.what in ("speed", "all"):
        speed.run(_speed_settings(a), results, a.cache, command)
    if a.what in ("quality", "pictures", "all"):
        for p in pictures.make_all(results, a.cache):
            logging.info("wrote %s", p)
    report.write(results, md)
    logging.info("wrote %s and %s/*.json in %.0f s", md, results, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
