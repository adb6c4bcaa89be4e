"""Clean training clips made from still photos by synthetic camera and object motion.

``moving_clip`` renders (T, S, S, 3) uint8 RGB clips: a background photo seen by a camera that pans,
zooms, rotates and shakes (or stands still, as CCTV cameras do), up to ``MAX_LAYERS`` independently
moving foreground layers cut from other photos (soft-edged shapes that occlude what is behind them
and uncover it again), motion blur where things move fast (sub-frame renders averaged in linear
light), and brightness that drifts or steps (clouds, lights, auto-exposure) and whole scenes
darkened towards night. ``clip_crop`` takes random space-time crops of real footage.
Everything is drawn from the ``rng`` given, so a seed gives the same clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np

from ..noise import linear_to_srgb, srgb_to_linear

MAX_LAYERS = 3


@dataclass
class _Path:
    """A 2-D similarity motion over time: centre (x, y) in source pixels, angle (deg), scale."""

    pos: np.ndarray
    vel: np.ndarray
    acc: np.ndarray
    angle: float
    spin: float
    scale: float
    zoom: float
    shake: float

    def at(self, t: float, jitter: np.ndarray) -> tuple[np.ndarray, float, float]:
        pos = self.pos + self.vel * t + 0.5 * self.acc * t * t + jitter * self.shake
        return pos, self.angle + self.spin * t, self.scale * (1.0 + self.zoom) ** t


def _matrix(pos: np.ndarray, angle: float, scale: float, out_centre: tuple[float, float]) -> np.ndarray:
    """Affine source -> output mapping that puts source point ``pos`` at ``out_centre``."""
    import cv2

    m = cv2.getRotationMatrix2D((float(pos[0]), float(pos[1])), float(angle), float(scale))
    m[:, 2] += np.array(out_centre) - pos
    return m


def _random_path(rng: np.random.Generator, src_hw: tuple[int, int], size: int, scale: float, still: bool,
                 speed: float) -> _Path:
    h, w = src_hw
    margin = size / scale / 2
    pos = np.array([rng.uniform(margin, max(margin, w - margin)), rng.uniform(margin, max(margin, h - margin))])
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-9
    vel = np.zeros(2) if still else direction * speed / scale  # source px per frame
    acc = np.zeros(2) if still else rng.normal(0, 0.1, 2) / scale
    return _Path(pos, vel, acc, angle=float(rng.uniform(-8, 8)), spin=0.0 if still else float(rng.normal(0, 0.4)),
                 scale=scale, zoom=0.0 if still else float(rng.normal(0, 0.006)),
                 shake=0.0 if still or rng.random() < 0.5 else float(rng.uniform(0.2, 1.5)) / scale)


def _shape_mask(rng: np.random.Generator, n: int) -> np.ndarray:
    """An (n, n) float32 alpha in [0, 1]: a soft ellipse or random polygon."""
    import cv2

    m = np.zeros((n, n), np.uint8)
    c = (n // 2, n // 2)
    if rng.random() < 0.5:
        axes = (int(n * rng.uniform(0.25, 0.48)), int(n * rng.uniform(0.25, 0.48)))
        cv2.ellipse(m, c, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    else:
        k = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = rng.uniform(0.2, 0.48, k) * n
        pts = np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(m, [pts], 255)
    edge = float(rng.uniform(0.6, 2.0))
    return cv2.GaussianBlur(m, (0, 0), edge).astype(np.float32) / 255.0


def _prescaled(photo: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """The photo area-downscaled towards ``scale`` (so the warp never minifies by more than ~1.4x,
    which would alias), and the scale still to apply."""
    import cv2

    if scale >= 0.7:
        return photo, scale
    h, w = photo.shape[:2]
    f = scale / 0.7
    small = cv2.resize(photo, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
    return small, scale / (small.shape[1] / w)


def moving_clip(photos: Sequence[np.ndarray], frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (frames, size, size, 3) uint8 RGB clip: ``photos[0]`` is the background, the others may
    become moving foreground layers."""
    import cv2

    bg = photos[0]
    fit = size / min(bg.shape[:2])
    scale = fit * float(np.exp(rng.uniform(np.log(1.05), np.log(4.0))))  # how much of the photo the view spans
    still = rng.random() < 0.3
    speed = float(rng.choice([rng.uniform(0.2, 2.0), rng.uniform(2.0, 10.0)]))  # output px per frame
    src, s = _prescaled(bg, scale)
    cam = _random_path(rng, src.shape[:2], size, s, still, speed)
    layers = []
    for k in range(int(rng.integers(0, MAX_LAYERS + 1)) if len(photos) > 1 else 0):
        photo = photos[1 + k % (len(photos) - 1)]
        n = int(size * rng.uniform(0.25, 0.7))
        y0, x0 = (int(rng.integers(0, max(1, d - n))) for d in photo.shape[:2])
        patch = photo[y0 : y0 + n, x0 : x0 + n]
        if min(patch.shape[:2]) < n:
            patch = cv2.resize(photo, (n, n), interpolation=cv2.INTER_AREA)
        mask = _shape_mask(rng, n)
        lpath = _random_path(rng, (n, n), n, 1.0, False, float(rng.uniform(0.5, 8.0)))
        lpath.pos = np.array([n / 2, n / 2])
        start = rng.uniform(0, size, 2)
        layers.append((srgb_to_linear(patch.astype(np.float32) / 255), mask, lpath, start))
    blur = not still and rng.random() < 0.5
    exposure = float(rng.uniform(0.3, 1.0)) if blur else 0.0
    dark = float(np.exp(rng.uniform(np.log(0.08), 0.0))) if rng.random() < 0.35 else 1.0
    gain = _brightness(rng, frames) * dark
    src_lin = srgb_to_linear(src.astype(np.float32) / 255)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        jitter = rng.normal(0, 1, 2)
        subs = np.linspace(-exposure / 2, exposure / 2, max(2, int(np.ceil(speed * exposure / 1.5)))) if blur else [0.0]
        acc = np.zeros((size, size, 3), np.float32)
        for dt in subs:
            pos, ang, sc = cam.at(t + dt, jitter)
            img = cv2.warpAffine(src_lin, _matrix(pos, ang, sc, (size / 2, size / 2)), (size, size),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            for patch, mask, lpath, start in layers:
                _, lang, lsc = lpath.at(t + dt, np.zeros(2))
                centre = tuple(start + lpath.vel * (t + dt))  # the layer's own travel across the view
                m = _matrix(lpath.pos, lang, lsc, centre)
                fg = cv2.warpAffine(patch, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
                a = cv2.warpAffine(mask, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
                img = img * (1 - a[..., None]) + fg * a[..., None]
            acc += img
        lin = acc / len(subs) * gain[t]
        out[t] = np.clip(np.round(linear_to_srgb(lin) * 255), 0, 255).astype(np.uint8)
    return out


def _brightness(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Per-frame linear-light gain: constant, a slow drift, or a step (a light switched on/off)."""
    r = rng.random()
    if r < 0.6:
        return np.ones(frames, np.float32)
    if r < 0.85:
        return np.exp(np.linspace(0, rng.normal(0, 0.25), frames)).astype(np.float32)
    g = np.ones(frames, np.float32)
    g[int(rng.integers(1, frames)) :] = float(np.exp(rng.normal(0, 0.4)))
    return g


def clip_crop(clip: np.ndarray, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random (frames, s, s, 3) space-time crop of real footage, s = min(size, its height, width)
    rounded down to a multiple of 8, played forwards or backwards."""
    t, h, w, _ = clip.shape
    s = min(size, h, w) // 8 * 8
    t0 = int(rng.integers(0, max(1, t - frames + 1)))
    y0, x0 = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    out = clip[t0 : t0 + frames, y0 : y0 + s, x0 : x0 + s]
    return np.ascontiguousarray(out[::-1] if rng.random() < 0.5 else out)
