"""The blind spot of self-supervised training, made by masking, and the noise measurement that sizes it.

For each window, a stratified grid of pixels of the target frame is *masked*: the (2r+1)^2 block
around each chosen pixel is overwritten with a copy of a nearby block displaced by more than the
noise's correlation length (natural texture, independent noise). With ``tube`` the same blocks are
overwritten in every frame of the window, for noise that the codec copies from frame to frame.
The loss is taken only at the chosen pixels against their original noisy values, whose noise the
network therefore cannot see (``tests/unit/test_blind_spot.py`` proves it with gradients).

r = 0 suits pixel-independent noise; r >= 1 spatially correlated noise (demosaicing, the ISP,
compression) — the structured-blind-spot remedy of the literature (N2V's struct masks, AP-BSN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from ..model import VideoDenoiser


@dataclass(frozen=True)
class MaskSpec:
    radius: int = 0  # block half-size r: the block is (2r+1)^2 pixels
    tube: bool = False  # mask the same blocks in every frame of the window
    spacing: int = 0  # grid cell of one masked pixel; 0 = automatic (4 * (r+1))

    @property
    def cell(self) -> int:
        return self.spacing or 4 * (self.radius + 1)


def mask_positions(n: int, h: int, w: int, spec: MaskSpec, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """One random pixel per grid cell, kept r+1 pixels away from the borders: (batch, y, x) arrays."""
    g, r = spec.cell, spec.radius
    ys, xs = np.arange(0, h - g + 1, g), np.arange(0, w - g + 1, g)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    b = np.repeat(np.arange(n), gy.size)
    lo, hi = r + 1, g - r - 1  # inside the cell, away from neighbours' blocks
    y = np.tile(gy.ravel(), n) + rng.integers(lo, max(hi, lo + 1), b.size)
    x = np.tile(gx.ravel(), n) + rng.integers(lo, max(hi, lo + 1), b.size)
    keep = (y >= r + 1) & (y < h - r - 1) & (x >= r + 1) & (x < w - r - 1)
    return b[keep], y[keep], x[keep]


def apply_mask(x: torch.Tensor, pos: tuple[np.ndarray, ...], spec: MaskSpec, block: int, target: int,
               rng: np.random.Generator) -> torch.Tensor:
    """x: (N, K * block, H, W) (``planes.Layout``). Returns a copy with the blocks around ``pos``
    overwritten by displaced blocks: in the target frame's channels (its RGB and noise maps), or in
    every frame's with a tube mask. (A noise map is a 3x3-smoothed function of luma through a
    gentle curve, so a masked pixel's value reaches its neighbours' maps only as a trace.)"""
    dev = x.device
    b, y, xx = (torch.from_numpy(np.asarray(a)).to(dev) for a in pos)
    r = spec.radius
    n, c, h, w = x.shape
    d = 2 * r + 2  # displacement: the copied block never overlaps the masked one
    sy = torch.from_numpy(rng.choice([-d, d], b.numel())).to(dev)
    sx = torch.from_numpy(rng.choice([-d, d], b.numel())).to(dev)
    chans = (torch.arange(c) if spec.tube else torch.arange(block * target, block * target + block)).to(dev)
    out = x.clone()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            ty, tx = y + dy, xx + dx
            fy = (ty + sy).clamp(0, h - 1)
            fx = (tx + sx).clamp(0, w - 1)
            src = x[b[:, None], chans[None, :], fy[:, None], fx[:, None]]
            out[b[:, None], chans[None, :], ty[:, None], tx[:, None]] = src
    return out


def masked_loss(model: VideoDenoiser, x: torch.Tensor, spec: MaskSpec, rng: np.random.Generator) -> torch.Tensor:
    """Self-supervised loss of one batch: MSE at the masked pixels against their noisy values."""
    block, target = model.layout.block, model.target
    n, _, h, w = x.shape
    pos = mask_positions(n, h, w, spec, rng)
    y = model(apply_mask(x, pos, spec, block, target, rng))
    b, py, px = (torch.from_numpy(np.asarray(a)).to(x.device) for a in pos)
    t = slice(block * target, block * target + 3)
    pred = y[b, :, py, px]
    ref = x[:, t][b, :, py, px]
    return torch.mean((pred - ref) ** 2)


@dataclass(frozen=True)
class NoiseStats:
    """What the recordings say about their noise (8-bit units, correlations in [-1, 1])."""

    sigma: float  # noise standard deviation (from frame differences in static regions)
    spatial_corr: tuple[float, float]  # autocorrelation of the noise at 1 and 2 pixels
    temporal_corr: float  # correlation of the noise between consecutive frames
    # noise std in dark static regions (luma 16-80) over that in bright ones (110-230): ~1 for noise
    # added to the 8-bit values, > 1 for a sensor's noise in linear light seen through the camera's
    # gamma (which stretches the shadows); 1.0 where either range has too few static pixels
    shadow_ratio: float = 1.0

    def mask_spec(self) -> MaskSpec:
        """The blind spot these statistics call for."""
        radius = 2 if self.spatial_corr[1] > 0.2 else 1 if self.spatial_corr[0] > 0.2 else 0
        return MaskSpec(radius=radius, tube=abs(self.temporal_corr) > 0.3)  # either sign: the neighbours know the noise


def measure_noise(clip: np.ndarray) -> NoiseStats:
    """Estimate the noise of a (T, H, W, 3) uint8 clip with no clean reference.

    Static pixels are found where consecutive frames differ little after smoothing. There the
    difference of frames t and t+2 is n_t - n_{t+2}; its spatial autocorrelation is the noise's,
    and var(f_t - f_{t+1}) = 2 s^2 (1 - rho) compares with var(f_t - f_{t+2}) to give rho
    (lag-1 temporal correlation, e.g. noise copied by a codec's skipped blocks). The same
    differences split by brightness give ``shadow_ratio``.
    """
    import cv2

    f = clip.astype(np.float32).mean(axis=3)  # luma-ish, (T, H, W)
    if f.shape[0] < 3:
        raise ValueError("need at least 3 frames to measure noise")
    d1, d2 = f[1:-1] - f[:-2], f[2:] - f[:-2]
    smooth = np.stack([cv2.blur(np.abs(cv2.blur(d, (7, 7))), (7, 7)) for d in d2])
    thr = np.quantile(smooth, 0.3)
    static = smooth <= thr
    v1 = float(np.var(d1[static[: len(d1)]])) if static.any() else 0.0
    v2 = float(np.var(d2[static])) if static.any() else 0.0
    sigma = float(np.sqrt(max(v2, 1e-6) / 2))
    rho = float(np.clip(1 - v1 / max(v2, 1e-6), -1, 1))
    corr = []
    for lag in (1, 2):
        a, b = d2[:, :, :-lag], d2[:, :, lag:]
        m = static[:, :, :-lag] & static[:, :, lag:]
        if m.sum() < 100:
            corr.append(0.0)
            continue
        av, bv = a[m] - a[m].mean(), b[m] - b[m].mean()
        corr.append(float((av * bv).mean() / max(np.sqrt((av**2).mean() * (bv**2).mean()), 1e-9)))
    level = np.stack([cv2.blur((a + b) / 2, (5, 5)) for a, b in zip(f[2:], f[:-2])])
    spread = []
    for lo, hi in ((16, 80), (110, 230)):
        m = static & (level >= lo) & (level < hi)
        spread.append(float(np.sqrt(np.var(d2[m]) / 2)) if m.sum() >= 500 else 0.0)
    ratio = spread[0] / spread[1] if min(spread) > 0 else 1.0
    return NoiseStats(sigma=sigma, spatial_corr=(corr[0], corr[1]), temporal_corr=rho, shadow_ratio=ratio)
