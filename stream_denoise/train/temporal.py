"""Full-pixel self-supervision from time: another frame of the recording, aligned to the target
frame, is an independent noisy observation of the same scene.

For the window of frame t, the targets are the nearest noisy frames (``reach_for``) u *outside* the window
on each side (before and after t; so their noise never enters the input) or, under mild noise
(``near_for``), the nearest frames t-1 and t+1, left out of the input window; each is warped to frame t
with optical flow computed on the *denoised* frames of the starting model (OpenCV DIS), and kept
only where the aligned denoised frames agree (occlusions, flow failures, scene cuts and borders are
left out); the loss sums over all kept targets of a pixel. Over the kept pixels

    E |f(window_t) - warp(y_u)|^2 = E |f(window_t) - x_t|^2 + noise variance + alignment error,

so minimising it teaches the network to denoise *every* pixel, its own included (the masked
blind-spot objective teaches it to ignore the centre pixel, which costs quality at inference), and
on held-out frames the same figure ranks models by their real error to the clean frame: fine-tuning
uses it for early stopping and keeps the starting model when training does not beat it.

It needs noise that is independent from frame to frame (sensor noise). Noise a codec copies between
frames (measured ``temporal_corr``) is handled by a larger gap to the target frame; static content
with such noise everywhere is the case for the masked objective (``masking.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..buffer import reflect_indices
from ..noise import srgb_to_linear
from ..planes import to_uint8_rgb, window_input
from .data import augment

if TYPE_CHECKING:
    from ..model import VideoDenoiser

MIN_VALID = 0.05  # below this fraction of usable pixels a clip gives no temporal targets
STRONG_NOISE = 10.0  # measured sigma (``measure_noise``'s 8-bit luma units) from which ``reach_for`` changes
TARGET_BYTES = 1 << 30  # targets + masks of one clip stay below this (a strided subset of its frames)


def reach_for(sigma: float) -> int:
    """Aligned target frames on each side of the window for noise of ``sigma`` (``measure_noise``'s
    8-bit luma units). Averaging two targets halves their noise but the farther frame aligns worse:
    a gain where the noise dominates (2-min ``base`` fine-tune, bikes Gaussian sigma 30, measured
    16.7: 33.59 -> 33.86 dB), a loss where the alignment error does (bikes ISO 1600, measured 5.3:
    36.61 -> 36.34 dB)."""
    return 2 if sigma >= STRONG_NOISE else 1


def near_for(sigma: float) -> bool:
    """Whether noise of ``sigma`` takes its targets from the nearest frames (t-1, t+1; ``nearest``),
    left out of the input window, rather than from the first frames outside it (t-3, t+3;
    ``outside``). Where the noise is mild, alignment error rules: a frame one step away aligns
    better than one three steps away. 2-min ``base`` fine-tunes, Lanczos targets (near / outside):
    carphone ISO 1600 (measured 7.2) 34.64 / 34.31 dB, bikes ISO 1600 (5.3) 37.54 / 37.13. Under
    strong noise the two outside targets on each side (``reach_for``) win: bikes sigma 30 33.74
    (nearest, one per side, bilinear) / 34.04. The input then misses a frame on each side of t that
    inference will have; fine-tuning is validated on full windows (``outside``), the inference
    case."""
    return sigma < STRONG_NOISE


# Weight of ``loss``'s anchor: the values without a valid target (no frame aligns there, or 8-bit
# clipping biases every target) are pulled towards the starting model's output as strongly as
# towards one target. Trained only where it has targets, a network drifts on the rest (motion
# boundaries, occlusions, near black and white) as steps accumulate: 2-min ``base`` fine-tunes on
# bikes sigma 30, ~1550 bfloat16 steps, with / without: 34.04 / 33.36 dB. The first-generation
# priors were the weaker guess there under mild noise or in a small network, so the anchor was kept
# for large networks under strong noise; with the 2026-12 priors it pays everywhere and keeps the
# fine-tune from lifting the shadows. Paired fine-tunes (lite 3000 steps, base 1200; the live half
# of the benchmark clips, 100 frames recorded), with / without (dB, mean error where the clean value
# is < 32 in levels): lite bikes sigma 30 32.12 / 32.01 (+2.7 / +4.9), bikes ISO 1600 36.99 / 36.86
# (+2.2 / +3.4); base bikes ISO 1600 38.06 / 37.96 (+2.2 / +3.1), bikes CCTV-like 30.02 / 29.96 (+4.6 / +4.5).
ANCHOR_WEIGHT = 1.0


LINEAR_RATIO = 1.2  # ``NoiseStats.shadow_ratio`` from which the noise is taken to be a sensor's (linear light)


def linear_for(shadow_ratio: float) -> bool:
    """Whether ``loss`` compares in linear light, for noise whose std in the shadows is
    ``shadow_ratio`` times that in the highlights (``measure_noise``).

    A sensor's noise is zero-mean in linear light; the camera's gamma curve bends it, so a noisy
    target's mean in 8-bit sRGB lies *below* the clean value in the shadows (Jensen), and a network
    fitted to noisy targets there learns to darken them: fine-tuned ``base`` on bikes at ISO 1600
    erred by -2.8 levels where the clean value is 32-64 (29 % of the pixels, 41 % of its squared
    error; supervised: +0.3). In linear light the targets are unbiased. Noise added to the 8-bit
    values (the Gaussian conditions) is the other way round: compared in linear light it biases
    the result (bikes sigma 30: 33.90 -> 30.03 dB). The two show in the shadow ratio: measured on
    the benchmark clips, Gaussian sigma 30 1.03 / 0.90 (bikes / carphone), ISO 1600 1.37 / 1.60,
    CCTV-like 2.35 / 1.43. 2-min ``base`` fine-tunes, sRGB / linear light: bikes ISO 1600 37.15 /
    38.21 dB (supervised: 38.56), carphone ISO 1600 34.65 / 34.59, CCTV-like bikes 32.79 / 32.80,
    carphone 26.11 / 26.12."""
    return shadow_ratio >= LINEAR_RATIO


def to_linear(v: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (clamped) -> linear light: ``noise.srgb_to_linear`` on tensors, differentiable."""
    v = v.clamp(0, 1)
    return torch.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055).clamp(min=1e-6) ** 2.4)


def _linear_slope(v: torch.Tensor) -> torch.Tensor:
    """d to_linear / dv at v."""
    v = v.clamp(0, 1)
    return torch.where(v <= 0.04045, torch.full_like(v, 1 / 12.92), 2.4 / 1.055 * ((v + 0.055) / 1.055).clamp(min=1e-6) ** 1.4)


def black_bias(pool: list[TemporalClip], linear: bool, upto: float) -> np.ndarray:
    """How far the targets near black sit above the starting model's estimate, as a table over that
    estimate's 8-bit value (256 entries, in ``loss``'s units: sRGB in [0, 1], or linear light).

    Near black a target's noise is clipped at 0, so its mean lies above the clean value (E[clip(x +
    n)] > x), and a network fitted to such targets lifts the shadows. Subtracting, from each target,
    the mean of (target - estimate) over the values whose estimate has the same 8-bit value makes
    the targets' mean there that of the starting model's estimate, which a supervised prior knows
    to be unbiased under clipping. It needs no model of the noise or of where a camera clips (raw
    before demosaicing, or the output): it is measured on this recording's own targets, and the
    network still learns to denoise those values (leaving them out left them to the anchor).
    Applied in full below ``upto`` (about one standard deviation of the shadows' noise: where
    clipping biases the targets) and fading to nothing at ``BIAS_REACH`` times that, so the starting
    model's own error elsewhere is not imposed (fading out at twice ``upto`` cost 0.07 / 0.14 dB
    against 1.5 times, see ``finetune._temporal_pools``)."""
    lut = np.zeros(256, np.float32)
    cut = int(min(255, np.ceil(BIAS_REACH * upto)))
    if cut <= 0:
        return lut
    sums, counts = np.zeros(256), np.zeros(256)
    unit = np.arange(256, dtype=np.float32) / 255.0
    value = srgb_to_linear(unit) if linear else unit  # an 8-bit value in the loss's units
    for c in pool:
        for j in range(len(c.ts)):  # a row at a time: a clip's targets as floats would not fit
            near_black = c.anchor[j] <= cut + 6  # (H, W, 3); +6: the smoothing's reach
            valid = c.valid[j] & near_black  # (S, H, W, 3)
            key = np.broadcast_to(c.anchor[j], valid.shape)[valid]
            diff = value[c.target[j][valid]] - value[key]
            sums += np.bincount(key, diff, 256)
            counts += np.bincount(key, minlength=256)
    seen = np.flatnonzero(counts[: cut + 1] >= BIAS_MIN_COUNT)
    if not len(seen):
        return lut
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)  # the table is smoothed over +-2 levels
    mean = np.convolve(sums, kernel, "same")[seen] / np.convolve(counts, kernel, "same")[seen]
    levels = np.arange(cut + 1)
    taper = np.clip((BIAS_REACH * upto - levels) / max((BIAS_REACH - 1) * upto, 1e-6), 0.0, 1.0)
    lut[: cut + 1] = np.interp(levels, seen, mean) * taper
    return lut


BIAS_REACH = 1.5  # ``black_bias`` fades from full at ``upto`` to nothing at this multiple of it
BIAS_MIN_COUNT = 200  # target values a ``black_bias`` level needs to be measured (others take their neighbours')


@dataclass
class TemporalClip:
    noisy: np.ndarray  # (T, H, W, 3) uint8
    target: np.ndarray  # (T', S, H, W, 3) uint8: S frames around the window (``outside``), warped to t
    valid: np.ndarray  # (T', S, H, W, 3) bool: where (and in which channels) each target can be trusted
    ts: list[int]  # the frames (of ``noisy``) that have targets: row j of target/valid is frame ts[j]
    anchor: np.ndarray  # (T', H, W, 3) uint8: the starting model's output at ts (``loss``: where no target is valid)
    inputs: list[list[int]]  # per row, the input window's frames (``window``, or ``nearest``'s without the targets)

    @property
    def valid_fraction(self) -> float:
        """The fraction of values that have at least one target."""
        return float(self.valid.any(axis=1).mean())


def window(t: int, frames: int, target: int, length: int) -> list[int]:
    """Frame indices of t's window (reflected at the ends of the clip)."""
    return reflect_indices(t, frames, target, length)


def denoise_clip(model: VideoDenoiser, clip: np.ndarray, sigmas: np.ndarray | None = None,
                 batch: int = 4) -> np.ndarray:
    """Every frame of a (T, H, W, 3) uint8 clip through ``model`` (windows reflected at the ends;
    ``sigmas``: the clip's noise reading, for a noise-aware network)."""
    t_len, h, w = clip.shape[:3]
    dev = next(model.parameters()).device
    out = np.empty_like(clip)
    model.eval()
    with torch.no_grad():
        for s in range(0, t_len, batch):
            ts = range(s, min(s + batch, t_len))
            win = np.stack([clip[window(t, model.frames, model.target, t_len)] for t in ts])
            x = torch.from_numpy(window_input(win, model.layout, sigmas)).to(dev)
            y = model(x)[:, :, :h, :w].float().cpu().numpy()
            for i, chw in enumerate(y):
                out[s + i] = to_uint8_rgb(chw)
    return out


def outside(t: int, frames: int, target: int, length: int, gap: int = 0, reach: int = 1) -> tuple[int | None, ...]:
    """The ``reach`` nearest frames before t and after t that are not in t's window (skipping ``gap``
    more), or None where the clip ends: (before_1 .. before_reach, after_1 .. after_reach)."""
    window = set(reflect_indices(t, frames, target, length))
    lo, hi = min(window) - 1 - gap, max(window) + 1 + gap
    before = [u if u >= 0 else None for u in range(lo, lo - reach, -1)]
    after = [u if u < length else None for u in range(hi, hi + reach)]
    return (*before, *after)


def nearest(t: int, frames: int, target: int, length: int, reach: int = 1) -> tuple[tuple[int | None, ...], list[int]]:
    """The ``reach`` nearest frames before and after t (None past the clip's ends), and t's window
    with those frames left out: each is replaced by the next frame farther out on its side that is
    not a target (else t), so the input holds no noise of the targets."""
    before = [u if u >= 0 else None for u in range(t - 1, t - 1 - reach, -1)]
    after = [u if u < length else None for u in range(t + 1, t + 1 + reach)]
    us = {u for u in (*before, *after) if u is not None}
    idx = window(t, frames, target, length)
    win = []
    for p, i in enumerate(idx):
        if i in us:
            step = -1 if p < target else 1
            i = next((idx[q] for q in range(p + step, -1 if step < 0 else frames, step) if idx[q] not in us), t)
        win.append(i)
    return (*before, *after), win


def build(clip: np.ndarray, denoised: np.ndarray, frames: int, target: int, gap: int = 0,
          tolerance: float = 6.0, margin: float | tuple[float, float] = 0.0, ts: list[int] | None = None, reach: int = 1,
          source: np.ndarray | None = None, near: bool = False) -> TemporalClip:
    """Aligned targets for the frames ``ts`` (default all) of ``clip``: the ``reach`` nearest frames
    on each side of the window (``outside``), or with ``near`` the ``reach`` nearest frames on each
    side of t, left out of the window (``nearest``; the rows' input windows are in ``inputs``);
    ``denoised`` (same shape, the starting model's output) guides the alignment. ``source`` (same
    shape; default ``clip``) are the frames warped into targets: the oracle benchmark
    (``benchmarks.finetune_oracle``) passes the clean frames.

    The warp is what the network learns to reproduce, so it must not blur: bilinear interpolation at
    a sub-pixel offset is a low-pass filter, and the network learned that blur (carphone ISO 1600,
    2-min ``base``: clean frames warped bilinearly as targets gave 33.80 dB, the clean frame itself
    on the same pixels 35.26). Lanczos (8x8) warps: 33.60 -> 34.31 dB with noisy targets (cubic
    34.14), bikes ISO 1600 36.97 -> 37.13, carphone sigma 30 30.64 -> 30.79, bikes sigma 30 34.04
    -> 33.95. The flow runs at full resolution (DIS finest scale 0; the medium preset stops at 1/2):
    carphone ISO 1600 34.31 -> 34.53, bikes 37.13 -> 37.14.

    Several targets per pixel average their noise in the loss (the gradient of the summed squared
    errors is that of the error to their mean): less of the targets' noise for the network to fit
    on a short recording.

    Known bias: the agreement test compares the denoised target frame, whose small residual noise
    comes from the target's own noise; averaged over 5x5 pixels its pull is weak (on a test pan,
    an oracle mask changed the result by 0.2 dB). Guiding with an estimate that leaves the target
    frame out was tried and is worse: the network then returns its neighbour, misaligning moving
    scenes by a frame (bikes: -8.7 dB).

    Channels whose denoised value at t is within ``margin`` of 0 or 255 are left out: there the
    8-bit clipping of the noise moves the target's mean (E[clip(x + n)] != x), which would teach the
    network to lift blacks and dim highlights. The test looks at the input's estimate only, never at
    the target's noise (selecting on that would bias the target)."""
    import cv2

    t_len, h, w = clip.shape[:3]
    ts = list(range(t_len)) if ts is None else ts
    lo, hi = margin if isinstance(margin, tuple) else (margin, margin)
    source = clip if source is None else source
    gray = [cv2.cvtColor(d, cv2.COLOR_RGB2GRAY) for d in denoised]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # type: ignore[attr-defined]
    dis.setFinestScale(0)  # flow at full resolution (the preset stops at 1/2)
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    tgt = np.zeros((len(ts), 2 * reach, h, w, 3), np.uint8)
    valid = np.zeros((len(ts), 2 * reach, h, w, 3), bool)
    inputs = []
    for j, t in enumerate(ts):
        if near:
            us, win = nearest(t, frames, target, t_len, reach)
        else:
            us, win = outside(t, frames, target, t_len, gap, reach), window(t, frames, target, t_len)
        inputs.append(win)
        for side, u in enumerate(us):
            if u is None:
                continue
            flow = dis.calc(gray[t], gray[u], None)  # gray[t](p) ~ gray[u](p + flow(p))
            mx, my = grid_x + flow[..., 0], grid_y + flow[..., 1]
            tgt[j, side] = cv2.remap(source[u], mx, my, cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REFLECT)
            g = cv2.remap(denoised[u], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            err = cv2.blur(np.abs(g.astype(np.float32) - denoised[t].astype(np.float32)).mean(axis=2), (5, 5))
            # Lanczos reads x-3 .. x+4: a target closer to the border would be made of reflected pixels
            inside = (mx >= 3) & (mx < w - 4) & (my >= 3) & (my < h - 4)
            unclipped = (denoised[t] >= lo) & (denoised[t] <= 255 - hi)
            valid[j, side] = ((err < tolerance) & inside)[..., None] & unclipped
    return TemporalClip(clip, tgt, valid, ts, denoised[ts], inputs)


def sample(pool: list[TemporalClip], batch: int, frames: int, target: int, patch: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random windows with all their aligned targets and the anchor: (N,K,P,P,3) uint8,
    (N,S,P,P,3) uint8, (N,S,P,P,3) bool, (N,P,P,3) uint8."""
    xs: list[np.ndarray] = []
    ts: list[np.ndarray] = []
    vs: list[np.ndarray] = []
    an: list[np.ndarray] = []
    tries = 0
    while len(xs) < batch:
        c = pool[int(rng.integers(len(pool)))]
        h, w = c.noisy.shape[1:3]
        j = int(rng.integers(len(c.ts)))
        y0, x0 = int(rng.integers(h - patch + 1)), int(rng.integers(w - patch + 1))
        v = c.valid[j, :, y0 : y0 + patch, x0 : x0 + patch]
        tries += 1
        if v.any(axis=0).mean() < (0.25 if tries < 50 * batch else 0.0):  # prefer patches with targets; never loop forever
            continue
        win = c.noisy[c.inputs[j], y0 : y0 + patch, x0 : x0 + patch]
        tg = c.target[j, :, y0 : y0 + patch, x0 : x0 + patch]
        a = c.anchor[j, y0 : y0 + patch, x0 : x0 + patch]
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        win, tg, v = augment(win, k, flip, (1, 2)), augment(tg, k, flip, (1, 2)), augment(v, k, flip, (1, 2))
        a = augment(a, k, flip, (0, 1))
        if target == frames // 2 and rng.integers(2):
            win = win[::-1]  # time reversal: the same scene played backwards
        xs.append(win)
        ts.append(tg)
        vs.append(v)
        an.append(a)
    return np.stack(xs), np.stack(ts), np.stack(vs), np.stack(an)


def loss(model: torch.nn.Module, x: torch.Tensor, tgt: torch.Tensor, valid: torch.Tensor,
         anchor: torch.Tensor | None = None, anchor_weight: float = 0.0, linear: bool = False,
         bias: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error to the aligned targets over the valid values. x (N,C,P,P) (``planes.Layout``);
    tgt, valid (N,S,3,P,P).

    With ``linear`` (``linear_for``) the errors are taken in linear light, each divided by the
    gamma curve's slope at that pixel: unbiased targets for a sensor's noise, with the weights of an
    8-bit error (a plain linear-light error weighs the shadows ~40x less: bikes ISO 1600 36.57 dB
    against 37.91 rescaled). The slope is taken at ``anchor`` (the starting model's output; pass it
    with ``anchor_weight=0`` to weigh without anchoring), a fixed weight per pixel, so the loss
    *values* of two networks compare (validation): a weight that followed the network's output
    would reward brightening (it shrinks the weight on the targets' noise).

    With ``anchor`` (N,3,P,P, the starting model's output), the values that have no valid target
    (no frame aligns there, or 8-bit clipping biases every target) are pulled towards it,
    ``anchor_weight`` times as strongly as towards one target: the loss otherwise says nothing there,
    and a network trained only on the other values drifts there (2-min ``base`` fine-tunes on bikes
    sigma 30 with *clean* targets on the same values: 34.11 dB after ~550 steps, 33.66 after ~1560).
    See ``ANCHOR_WEIGHT``.

    ``bias`` (``black_bias``'s table, 256 values) is subtracted from each target at the 8-bit value
    of ``anchor`` (required with it): unbiased targets near black."""
    y = model(x)
    shift: torch.Tensor | float = 0.0
    if bias is not None:
        if anchor is None:
            raise ValueError("the black-bias table is indexed by the anchor: pass both")
        shift = bias[(anchor * 255).round().long()][:, None]
    if linear:
        scale = 1 / _linear_slope(y.detach() if anchor is None else anchor).clamp(min=0.05)
        diff = (to_linear(y)[:, None] - (to_linear(tgt) - shift)) * scale[:, None]
    else:
        diff = y[:, None] - (tgt - shift)
    err = (diff**2 * valid).sum()
    count = valid.sum()
    if anchor is not None and anchor_weight > 0:
        free = ~valid.any(dim=1)
        off = (to_linear(y) - to_linear(anchor)) * scale if linear else y - anchor
        err = err + anchor_weight * (off**2 * free).sum()
        count = count + anchor_weight * free.sum()
    return err / count.clamp(min=1)
