"""Self-supervised fine-tuning on a camera's own noisy recordings (no clean reference).

    stream-denoise fine-tune rec1.mp4 rec2.mkv --out mycam.pt [--from lite] [--minutes 10]

1. Measure the noise of the recordings (level, spatial and temporal correlation) and size the
   blind spot from it (``masking.NoiseStats.mask_spec``).
2. Train with the masked loss (``masking.masked_loss``) from the shipped model (or from scratch),
   holding out the last 10% of each clip (at least K+1 frames, at most 30): its masked loss with *fixed* masks is the validation
   score, and the best weights seen are kept (early stopping).
3. Write a model file that ``run``, ``denoise`` and ``export`` accept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .. import zoo
from ..model import create_model, load_model, save_model
from .data import Pair, read_clip, sample_windows, to_input
from .loop import fit
from .masking import MaskSpec, masked_loss, measure_noise

log = logging.getLogger(__name__)


def fine_tune(clips: Sequence[str | Path], out: str | Path, init: str | None = "lite", arch: str = "lite",
              window: str = "centered", minutes: float = 10.0, steps: int = 3000, seed: int = 0,
              max_frames: int = 300, batch: int = 8, patch: int = 96, lr: float = 3e-4,
              mask: MaskSpec | None = None, threads: int | None = None, frames: Sequence[np.ndarray] | None = None,
              progress: bool = True) -> dict:
    """Fit a model to recordings; ``frames`` may pass decoded clips ((T,H,W,3) uint8 RGB) directly."""
    if threads:
        torch.set_num_threads(threads)
    data = list(frames) if frames is not None else [read_clip(c, max_frames=max_frames) for c in clips]
    model = load_model(zoo.resolve(init, ".pt")) if init else create_model(arch, window=window)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    log.info("fine-tuning on %s", device)
    stats = measure_noise(data[0])
    mask = mask or stats.mask_spec()
    log.info("noise: sigma %.1f, spatial corr %.2f/%.2f, temporal corr %.2f -> blind spot r=%d%s",
             stats.sigma, *stats.spatial_corr, stats.temporal_corr, mask.radius, " (tube)" if mask.tube else "")
    train, held = [], []
    for clip in data:
        held_n = min(max(len(clip) // 10, model.frames + 1), 30)
        cut = len(clip) - held_n
        if cut >= 2 * model.frames:
            train.append(Pair(clip[:cut], None))
            held.append(clip[cut:])
        else:
            train.append(Pair(clip, None))
    patch = min(patch, *(min(c.noisy.shape[1:3]) // 4 * 4 for c in train))
    vrng = np.random.default_rng(seed + 1)
    val_batches = []
    if held:
        vpool = [Pair(h, None) for h in held]
        for _ in range(4):
            x, _, _ = sample_windows(vpool, batch, model.frames, model.target, patch, vrng)
            val_batches.append((torch.from_numpy(to_input(x)).to(device), int(vrng.integers(1 << 31))))

    def validate() -> float:
        with torch.no_grad():
            return float(np.mean([masked_loss(model, x, mask, np.random.default_rng(s)).item() for x, s in val_batches]))

    def step_loss(r: np.random.Generator) -> torch.Tensor:
        x, _, _ = sample_windows(train, batch, model.frames, model.target, patch, r)
        return masked_loss(model, torch.from_numpy(to_input(x)).to(device), mask, r)

    out = Path(out)
    summary = fit(model, step_loss, steps=steps, minutes=minutes, lr=lr, seed=seed,
                  checkpoint=out.with_suffix(".ckpt"), validate=validate if val_batches else None,
                  validate_every=100, progress=progress)
    save_model(model, out, trained="self-supervised fine-tune", init=init or f"scratch:{arch}",
               clips=[str(c) for c in clips], mask_radius=mask.radius, mask_tube=mask.tube,
               noise_sigma=stats.sigma, seed=seed, **summary)
    log.info("wrote %s: %d steps in %.0f s, held-out masked loss %s", out, summary["steps"], summary["seconds"],
             f"{summary['best_val']:.6f}" if summary["best_val"] is not None else "n/a")
    return summary
