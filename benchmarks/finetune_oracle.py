"""Where the temporal fine-tuning objective loses to supervised training: the same fine-tune with
its aligned noisy targets replaced by clean ones (oracle runs, diagnosis only).

    python -m benchmarks.finetune_oracle --clip bikes --condition gaussian30 --targets clean-warped

--targets noisy: the objective as shipped; clean-warped: the clean frames warped by the same flow
onto the same kept pixels (what is left is alignment and pixel selection); clean-same-pixels: the
clean frame itself on the kept pixels (what is left is the selection). The benchmark's frozen
clip (first half recorded, second half scored), fine-tuning budget and scoring are those of
``python -m benchmarks quality``; --reach overrides ``temporal.reach_for``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import CACHE_DIR
from . import clips, metrics, models


@contextmanager
def oracle_targets(kind: str, rec_noisy: np.ndarray, rec_clean: np.ndarray, forced_reach: int | None) -> Iterator[None]:
    """While active, ``temporal.build`` (as the fine-tune calls it) makes ``kind`` targets from the
    clean frames of the recorded half."""
    from stream_denoise.train import temporal

    build = temporal.build

    def oracle(clip, denoised, frames, target, gap=0, tolerance=6.0, margin=0.0, ts=None, reach=1, near=False):
        reach = forced_reach or reach
        if kind == "noisy":
            return build(clip, denoised, frames, target, gap, tolerance, margin, ts, reach, near=near)
        # the fine-tune passes a slice (training part or held-out tail) of the recorded clip
        off = next(o for o in range(len(rec_noisy) - len(clip) + 1)
                   if np.array_equal(rec_noisy[o], clip[0]) and np.array_equal(rec_noisy[o + len(clip) - 1], clip[-1]))
        clean = rec_clean[off : off + len(clip)]
        tc = build(clip, denoised, frames, target, gap, tolerance, margin, ts, reach,
                   source=clean if kind == "clean-warped" else None, near=near)
        if kind == "clean-same-pixels":
            tc.target[:] = clean[tc.ts][:, None]
        return tc

    temporal.build = oracle
    try:
        yield
    finally:
        temporal.build = build


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.finetune_oracle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="bikes", choices=["bikes", "carphone"])
    p.add_argument("--condition", default="gaussian30")
    p.add_argument("--targets", default="noisy", choices=["noisy", "clean-warped", "clean-same-pixels"])
    p.add_argument("--model", default="base", help="starting model (name or .pt)")
    p.add_argument("--reach", type=int, help="aligned frames per side (default: temporal.reach_for)")
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from stream_denoise import model_files

    c = clips.make(a.clip, a.condition, a.frames, None, CACHE_DIR, 0)
    (noisy, clean), (rec_noisy, rec_clean) = c.live, c.recorded
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp, oracle_targets(a.targets, rec_noisy, rec_clean, a.reach):
        out = Path(tmp) / "model.pt"
        summary = models.fine_tune(Path(model_files.resolve(a.model, ".pt")), rec_noisy, out, a.minutes, 3000, a.threads)
        den, _ = models.denoise_clip(out, noisy, "onnxruntime", a.threads)
    print(json.dumps({"clip": a.clip, "condition": a.condition, "targets": a.targets, "model": a.model,
                      "reach": a.reach, "minutes": a.minutes, "steps": summary["steps"],
                      "psnr": round(metrics.score(den, clean)["psnr"], 2), "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
