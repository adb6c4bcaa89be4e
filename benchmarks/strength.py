"""What ``[model] strength`` does: PSNR and the shadows' shift of each model at several strengths.

    python -m benchmarks.strength [--models lite,base] [--strengths 0.8,1,1.1,1.25]
                                  [--conditions gaussian30,gaussian50,lowlight-iso1600,lowlight-iso6400,cctv] [--frames 20]

``strength`` multiplies the noise reading a noise-aware network is told (``Denoiser``): the
network's own trade between removing noise and keeping detail, as FFDNet's noise map is. On the
frozen clips and settings of a quality result file (default ``quality-zero-shot.json``), the last
``frames`` live frames (with the frames before them as the windows' context) go through the
streaming ``Denoiser`` on ONNX Runtime at each strength; PSNR and dark (mean output - clean where
the clean value is below 32, the quality tables' figures) per clip x condition.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

from . import CACHE_DIR, models
from .metrics import dark_bias, psnr
from .report import machine_info
from .shadows import live_tails, read_source, tail_args, write_result

log = logging.getLogger(__name__)


def _scores(out: np.ndarray, clean: np.ndarray) -> dict[str, float | None]:
    """Per-frame PSNR and dark, averaged over frames (as the quality tables do)."""
    darks = [dark_bias(o[None], c[None]) for o, c in zip(out, clean)]
    return {"psnr": round(float(np.mean([psnr(o[None], c[None]) for o, c in zip(out, clean)])), 3),
            "dark": round(float(np.nanmean(darks)), 2) if not all(np.isnan(darks)) else None}


def run(source: dict, conditions: list[str], model_names: list[str], strengths: list[float], frames: int,
        threads: int) -> list[dict]:
    refs, _ = models.resolve_many(model_names, CACHE_DIR)
    rows = []
    for r, clip, start, ctx in live_tails(source, conditions, frames):
        noisy, clean = clip.live
        row: dict = {"clip": r["clip"], "condition": r["condition"], "frames": len(clean) - start,
                     "noisy input": _scores(noisy[start:], clean[start:]), "models": {}}
        for name, ref in refs.items():
            row["models"][name] = {}
            for s in strengths:
                out, _ = models.denoise_clip(ref.path, noisy[start - ctx:], "onnxruntime", threads, strength=s)
                row["models"][name][f"{s:g}"] = _scores(out[ctx:], clean[start:])
            log.info("strength %s/%s %s: %s", r["clip"], r["condition"], name,
                     ", ".join(f"x{k} {v['psnr']:.2f} dB dark {v['dark']}" for k, v in row["models"][name].items()))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.strength", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    tail_args(p, conditions="gaussian30,gaussian50,lowlight-iso1600,lowlight-iso6400,cctv", models="lite,base",
              out="strength.json")
    p.add_argument("--strengths", default="0.8,1,1.1,1.25")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        strengths = [float(s) for s in a.strengths.split(",")]
    except ValueError:
        print(f"strength: --strengths takes numbers separated by commas, not {a.strengths!r}", file=sys.stderr)
        return 2
    source = read_source("strength", a.source)
    if source is None:
        return 2
    t0 = time.monotonic()
    rows = run(source, a.conditions.split(","), [m for m in a.models.split(",") if m], strengths, a.frames, a.threads)
    if not rows:
        print(f"strength: {a.source} has no run of {a.conditions}", file=sys.stderr)
        return 2
    result = {"meta": {**machine_info(), "command": " ".join(["python -m benchmarks.strength", *(argv or sys.argv[1:])]),
                       "source": a.source.name, "source_commit": source["meta"].get("commit"), "strengths": strengths,
                       "seconds": round(time.monotonic() - t0, 1)}, "runs": rows}
    write_result(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
