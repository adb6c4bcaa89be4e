"""The noise level a noise-aware network is told, measured from the noisy frames themselves.

``estimate(frame)`` gives the noise's standard deviation (8-bit levels) in ``len(CENTRES)``
brightness bands, at ``len(SCALES)`` scales: camera noise grows with the signal in linear light and
the sRGB curve lifts it in the shadows, so one number cannot describe it, and demosaicing and codecs
move it from single pixels to blobs and blocks, which a pixel-scale measurement misses (Bayer
demosaicing of ISO 1600 noise: ~1 level at scale 1, ~15 at scale 4; H.264 at 0.1 bit/pixel: 0.5
and 5). Per band and scale it is a low quantile of the magnitude of a second-difference residual of
the frame area-downscaled by the scale, which flat regions dominate, times the scale:

    r = (f[y-1] - 2 f[y] + f[y+1]) (x) (same along x) / 6      (white noise of std s -> std s)
    s_band ~= quantile(|r| over the band's pixels, Q) / QUANTILE_OF_HALF_NORMAL

``level_map(frame, sigmas)`` turns them into the network's extra input planes (one per scale): at
each pixel the band values interpolated at its smoothed brightness, divided by ``MAP_SCALE``. The
readings are not the true level of correlated noise, and texture raises the coarse one; that is
harmless because the network is trained with the same estimator on its noisy inputs, so it learns
what each reading means. ``NoiseTracker`` re-estimates a live stream every few frames and keeps the median of its
recent readings, so the map follows day/night and gain changes within seconds. numpy + OpenCV only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

CENTRES = np.array([16.0, 64.0, 128.0, 208.0], np.float32)  # band centres (8-bit luma)
EDGES = np.array([0.0, 40.0, 96.0, 168.0, 256.0], np.float32)
MAP_SCALE = 64.0  # map value 1.0 = a standard deviation of 64 levels
Q = 0.25
QUANTILE_OF_HALF_NORMAL = 0.31864  # P(|Z| < 0.31864) = 0.25 for Z ~ N(0, 1)
SCALES = (1, 4)
PLANES = len(SCALES)  # extra input channels of a noise-aware network
MIN_SHARE = 0.003  # a band needs this fraction of the pixels to be measured; others take a neighbour's


def luma(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB (uint8, or float32 in 8-bit units) -> (H, W) luma smoothed over 3x3 (noise
    barely moves it), same dtype."""
    import cv2

    return cv2.blur(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (3, 3))


def estimate(frame: np.ndarray) -> np.ndarray:
    """Noise standard deviation (8-bit levels) per scale and brightness band, (PLANES,
    len(CENTRES)) float32. frame: (H, W, 3) uint8 RGB."""
    import cv2

    f = frame.astype(np.float32)
    h, w = f.shape[:2]
    rows = []
    for s in SCALES:
        g = f if s == 1 else cv2.resize(f, (max(3, w // s), max(3, h // s)), interpolation=cv2.INTER_AREA)
        rows.append(_bands(g, step=2 if s == 1 else 1) * s)
    return np.stack(rows)


def _bands(f: np.ndarray, step: int) -> np.ndarray:
    """(len(CENTRES),) per-band readings of a float32 (h, w, 3) image; ``step`` subsamples."""
    r = f[:-2] - 2 * f[1:-1] + f[2:]
    r = np.abs(r[:, :-2] - 2 * r[:, 1:-1] + r[:, 2:])[::step, ::step] / 6.0  # (h, w, 3)
    lum = luma(f)[1:-1, 1:-1][::step, ::step]
    band = np.searchsorted(EDGES[1:-1], lum.ravel(), side="right")
    vals = r.reshape(-1, 3)
    out = np.full(len(CENTRES), np.nan, np.float32)
    for b in range(len(CENTRES)):
        sel = band == b
        if sel.sum() >= max(16, MIN_SHARE * band.size):
            out[b] = np.quantile(vals[sel], Q) / QUANTILE_OF_HALF_NORMAL
    return fill(out)


def fill(sigmas: np.ndarray) -> np.ndarray:
    """Unmeasured (NaN) bands take the nearest measured band's value; none measured -> zeros."""
    ok = np.flatnonzero(~np.isnan(sigmas))
    if not len(ok):
        return np.zeros_like(sigmas)
    idx = np.arange(len(sigmas))
    nearest = ok[np.abs(idx[:, None] - ok[None, :]).argmin(axis=1)]
    return sigmas[nearest].astype(np.float32)


def estimate_clip(frames: np.ndarray, n: int = 4) -> np.ndarray:
    """The median of ``estimate`` over up to ``n`` evenly spread frames of (T, H, W, 3) uint8:
    (PLANES, len(CENTRES)) float32."""
    idx = np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int)
    return np.median(np.stack([estimate(frames[i]) for i in idx]), axis=0).astype(np.float32)


@dataclass(frozen=True)
class MapCurve:
    """What a network is told about strong noise: each noise map value m (in 8-bit levels) becomes
    m + slope * max(0, m - knee). It is applied to the lookup table the maps are read from (``lut``),
    so it is exact per pixel and costs nothing per frame.

    A calibration of a trained network, carried by its model file (config, ONNX metadata, engine
    manifest) into its ``planes.Layout``. A network trained on the squared error leaves part of the
    lift that clipping at black gives the shadows' mean under strong noise, and being told a little
    more noise there makes it remove more. ``[model] strength`` does the same for every level; the
    curve acts only above ``knee``, which readings of mild noise never reach. It is fitted on the
    validation set (models/README), and a fine-tune of a file keeps the curve."""

    knee: float
    slope: float

    def __post_init__(self) -> None:
        if not (self.knee >= 0 and 0 <= self.slope <= 2):
            raise ValueError(f"map curve knee must be >= 0 levels and slope within 0-2, got {self.knee}, {self.slope}")

    def to_meta(self) -> str:
        """"knee,slope": the text model metadata carries (no quotes: it is a Triton parameter too), each
        number in its shortest form that reads back exactly (30, 0.4, 0.3333333333333333)."""
        return ",".join(repr(float(v)).removesuffix(".0") for v in (self.knee, self.slope))

    @classmethod
    def from_meta(cls, text: str | None) -> MapCurve | None:
        """From ``to_meta``'s text (None or empty: no curve); ValueError when it is not one."""
        if not text:
            return None
        knee, slope = (float(v) for v in text.split(","))
        return cls(knee, slope)


def lut(sigmas: np.ndarray, curve: MapCurve | None = None) -> np.ndarray:
    """(PLANES, 256) float32: each plane's map value at each smoothed luma level (through ``curve``)."""
    levels = np.arange(256, dtype=np.float32)
    table = np.stack([np.interp(levels, CENTRES, s) for s in sigmas]).astype(np.float32) / MAP_SCALE
    if curve is not None:
        table += np.float32(curve.slope) * np.maximum(table - np.float32(curve.knee / MAP_SCALE), 0)
    return table


def level_map(frame: np.ndarray, sigmas: np.ndarray, curve: MapCurve | None = None) -> np.ndarray:
    """(PLANES, H, W) float32 noise map of a (H, W, 3) uint8 RGB frame, for noise of ``sigmas``
    (``estimate``'s shape), through ``curve``."""
    return lut(sigmas, curve)[:, luma(frame)]


def level_map_torch(frames: Any, luts: Any) -> Any:
    """``level_map`` for a batch on any torch device: frames (N, H, W, 3) RGB as float 8-bit values
    (or uint8), luts (N, PLANES, 256) (``lut``) -> (N, PLANES, H, W) float32. Luma as OpenCV's
    fixed-point RGB2GRAY and its 3x3 box blur (edges reflected; OpenCV reflects them without the
    edge pixel: maps agree except on the border pixels)."""
    import torch
    import torch.nn.functional as F

    w = torch.tensor([9798.0, 19235.0, 3735.0], device=frames.device)
    g = torch.div(frames.float() @ w + 16384, 32768, rounding_mode="floor")[:, None]
    g = F.avg_pool2d(F.pad(g, (1, 1, 1, 1), mode="reflect"), 3, 1)
    idx = g.round().clamp_(0, 255).long()  # (N, 1, H, W)
    n, planes = luts.shape[:2]
    return torch.gather(luts, 2, idx.flatten(1)[:, None].expand(n, planes, -1)).view(n, planes, *idx.shape[2:])


class NoiseTracker:
    """The noise of a live stream: ``update(frame)`` measures every ``every``-th frame and keeps
    the median of the last ``keep`` readings (bounded); ``sigmas`` is that median. ``update``
    returns it times ``gain`` (``ModelConfig.strength``: what the network is told), scaled once per
    new reading."""

    def __init__(self, every: int = 15, keep: int = 8, gain: float = 1.0) -> None:
        self.every, self.count, self.gain = every, 0, np.float32(gain)
        self.readings: deque[np.ndarray] = deque(maxlen=keep)
        self.sigmas = np.zeros((PLANES, len(CENTRES)), np.float32)
        self.told = self.sigmas

    def update(self, frame: np.ndarray) -> np.ndarray:
        if self.count % self.every == 0:
            self.readings.append(estimate(frame))
            self.sigmas = np.median(np.stack(self.readings), axis=0).astype(np.float32)
            self.told = self.sigmas * self.gain if self.gain != 1 else self.sigmas
        self.count += 1
        return self.told

    def reset(self) -> None:
        """Forget the readings (a new stream or a reconnect: the camera may have changed)."""
        self.readings.clear()
        self.count = 0
