"""Scores on clipped 8-bit RGB, averaged per frame (then per clip by the caller).

flicker: temporal consistency, the RMSE (8-bit units) between the frame-to-frame change of the
output and that of the clean clip, averaged over consecutive pairs. 0 = the output changes over
time exactly as the clean video does; a per-frame denoiser that leaves noise shows high flicker.

dark: the mean error (8-bit levels, output minus clean) over the pixels whose clean value (mean of
R, G, B) is below ``DARK``: a network fitted to noisy shadows learns to darken or lift them, which
PSNR hides when shadows are a small part of the frame. The same figure as the pre-training's
validation (``stream_denoise.train.validate``).
"""

from __future__ import annotations

import math

import numpy as np

from stream_denoise.noise import DARK_LEVEL as DARK  # clean values below this are "dark"

PSNR_CAP = 99.0  # identical frames


def _check(out: np.ndarray, clean: np.ndarray) -> None:
    if out.shape != clean.shape or out.dtype != np.uint8 or clean.dtype != np.uint8:
        raise ValueError(f"need equal-shape uint8 arrays, got {out.shape} {out.dtype} / {clean.shape} {clean.dtype}")


def psnr(out: np.ndarray, clean: np.ndarray) -> float:
    """PSNR in dB of one (H, W, 3) uint8 frame."""
    _check(out, clean)
    mse = float(np.mean((out.astype(np.float64) - clean.astype(np.float64)) ** 2))
    return PSNR_CAP if mse <= 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


def ssim(out: np.ndarray, clean: np.ndarray) -> float:
    """SSIM (scikit-image defaults: uniform 7x7 windows, mean over RGB channels) of one frame."""
    from skimage.metrics import structural_similarity

    _check(out, clean)
    return float(structural_similarity(clean, out, channel_axis=2, data_range=255))


def flicker(out: np.ndarray, clean: np.ndarray) -> float:
    """Mean over consecutive pairs of RMSE((out[t+1]-out[t]) - (clean[t+1]-clean[t])); nan for 1 frame."""
    _check(out, clean)
    if len(out) < 2:
        return float("nan")
    o, c = out.astype(np.float32), clean.astype(np.float32)
    d = np.diff(o, axis=0) - np.diff(c, axis=0)
    return float(np.mean(np.sqrt(np.mean(d**2, axis=(1, 2, 3)))))


def dark_bias(out: np.ndarray, clean: np.ndarray) -> float:
    """Mean of out - clean (levels, over the three channels) where the clean pixel's mean is below DARK; nan if none is."""
    _check(out, clean)
    dark = clean.mean(axis=-1) < DARK
    if not dark.any():
        return float("nan")
    err = out.astype(np.float32).mean(axis=-1) - clean.astype(np.float32).mean(axis=-1)
    return float(err[dark].mean())


def score(out: np.ndarray, clean: np.ndarray) -> dict:
    """Per-frame PSNR/SSIM averaged over the clip, flicker, the dark bias, and the per-frame PSNR list."""
    _check(out, clean)
    p = [psnr(o, c) for o, c in zip(out, clean, strict=True)]
    s = [ssim(o, c) for o, c in zip(out, clean, strict=True)]
    return {"psnr": float(np.mean(p)), "ssim": float(np.mean(s)), "flicker": flicker(out, clean),
            "dark": dark_bias(out, clean), "psnr_frames": [round(v, 3) for v in p]}


def gaussian_psnr(sigma: float) -> float:
    """PSNR of unclipped additive white Gaussian noise of std ``sigma`` (8-bit units)."""
    return 20 * math.log10(255.0 / sigma)
