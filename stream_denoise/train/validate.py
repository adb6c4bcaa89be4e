"""The held-out validation of pre-training and its gate.

A fixed set: ``CLIPS`` clips of the corpus's validation split (photos with synthetic motion and the
held-out end of a real clip; never a benchmark clip), each under every condition of ``CONDITIONS``
(clean, Gaussian, sensor noise across ISO levels with and without Bayer demosaicing, H.264/H.265 at
CCTV bit rates) with a fixed seed. For a model it reports per condition the PSNR of the centre
frames (8-bit, clipped, as the product writes them), the noisy input's PSNR, and the mean error
where the clean value is below 32 (dark regions: a denoiser must not shift their mean).

The gate (``better``) keeps a candidate only if its mean PSNR over the conditions beats the
shipped model's, no condition loses more than ``TOLERANCE_DB`` against it (a user of that condition
would see a regression), it is not below the noisy input on a condition where the shipped one
was not, and on no condition does it shift the dark regions' mean by more than ``DARK_TOLERANCE``
levels beyond both the noisy input and the shipped model (clipping at black lifts a noisy input's
dark mean; a denoiser may leave some of that lift, never add its own), nor beyond ``DARK_LIMIT``
levels where the shipped model was within it (issue 24's acceptance: the shadows' mean within 2
levels, kept wherever it was met), nor by more than ``DARK_GROWTH`` levels beyond the shipped
model's own shift (unless within ``DARK_FREE``): the benchmark's footage moves its shadows 1.5-2.3
times as far as this set does (2026-12-07: a midpoint that lifted validation's σ50 shadows from
+1.02 to +1.81 lifted the benchmark's from +1.33 to +3.14), so a small step here is a large one there.
Conditions with a codec need PyAV; without it they are left out (and the report says so).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..model.net import VideoDenoiser
from .. import noise_level
from ..noise import DARK_LEVEL, NoiseSpec, add_noise
from ..planes import to_uint8_rgb, window_input
from .corpus import Corpus
from .pool import PoolSpec, clean_clip, has_codecs

log = logging.getLogger(__name__)

CLIPS, FRAMES, SIZE, SEED = 16, 9, 192, 20261204
TOLERANCE_DB = 0.25  # the most a condition may lose against the shipped model
DARK_TOLERANCE = 1.0  # levels of dark-mean shift beyond the larger of the noisy input's and the shipped model's
DARK_LIMIT = 2.0  # levels of dark-mean shift a condition keeps once the shipped model is within them
DARK_GROWTH = 0.5  # levels the dark-mean shift may grow beyond the shipped model's on any condition
DARK_FREE = 1.0  # a dark-mean shift within this many levels is always allowed
CURVE_COST_DB = 0.05  # the most mean PSNR a map curve (a calibration for the shadows) may cost
DARK_SAME = 0.05  # levels of dark-mean shift that count as no change
CURVE_GAIN = 0.5  # levels by which a map curve must bring some condition's dark-mean shift closer to 0
CONDITIONS: dict[str, NoiseSpec | None] = {
    "clean": None,
    "gauss5": NoiseSpec("gaussian", sigma=5),
    "gauss15": NoiseSpec("gaussian", sigma=15),
    "gauss30": NoiseSpec("gaussian", sigma=30),
    "gauss50": NoiseSpec("gaussian", sigma=50),
    "iso100": NoiseSpec("camera", photons=4000, read_noise=2),
    "iso1600": NoiseSpec("camera", photons=250, read_noise=3),
    "iso6400": NoiseSpec("camera", photons=62.5, read_noise=4),
    "iso1600-bayer": NoiseSpec("camera", photons=250, read_noise=3, mosaic=True),
    "cctv": NoiseSpec("camera", photons=150, read_noise=3, mosaic=True, codec="h264", bits_per_pixel=0.1),
    "cctv-day": NoiseSpec("camera", photons=2000, read_noise=2, mosaic=True, codec="h264", bits_per_pixel=0.15),
    "hevc-night": NoiseSpec("camera", photons=100, read_noise=4, mosaic=True, codec="hevc", bits_per_pixel=0.08),
}


@dataclass
class ValidationSet:
    names: list[str]
    noisy: dict[str, np.ndarray]  # (N, FRAMES, S, S, 3) uint8 per condition
    clean: np.ndarray  # (N, S, S, 3) uint8: the centre frames
    hash: str


def build(corpus: Corpus) -> ValidationSet:
    spec = PoolSpec(seed=SEED, generation=0, clips=CLIPS, frames=FRAMES, size=SIZE, split="val")
    clips = [clean_clip(corpus, spec, i)[0] for i in range(CLIPS)]
    coder = has_codecs()
    noisy: dict[str, np.ndarray] = {}
    for c, (name, cond) in enumerate(CONDITIONS.items()):
        if cond is not None and cond.codec is not None and not coder:
            log.warning("validation: %s left out (needs PyAV for its codec)", name)
            continue
        noisy[name] = np.stack([clip if cond is None else add_noise(clip, cond, np.random.default_rng([SEED, c, i]))
                                for i, clip in enumerate(clips)])
    return ValidationSet(list(noisy), noisy, np.stack([c[FRAMES // 2] for c in clips]), corpus.hash)


def _windows(noisy: np.ndarray, model: VideoDenoiser) -> np.ndarray:
    """(N, K * (3 + P), S, S) float32: the window centred on (causal: ending at) each clip's middle
    frame, each frame followed by its noise maps for the clip's reading (``planes.window_input``)."""
    layout = model.layout
    mid = noisy.shape[1] // 2
    frames = noisy[:, mid - layout.target : mid - layout.target + layout.frames]  # (N, K, S, S, 3)
    sigmas = np.stack([noise_level.estimate_clip(n) for n in noisy]) if layout.noise_planes else None
    return window_input(frames, layout, sigmas)


def score(model: VideoDenoiser, vset: ValidationSet, batch: int = 8) -> dict[str, dict[str, float]]:
    """Per condition: psnr, noisy_psnr, dark_bias and noisy_dark_bias (mean error in levels where
    clean < 32, of the output and of the noisy centre frame)."""
    model.eval()
    device = next(model.parameters()).device
    clean = vset.clean.astype(np.float32)
    dark = clean.mean(axis=3) < DARK_LEVEL
    out: dict[str, dict[str, float]] = {}
    for name in vset.names:
        noisy = vset.noisy[name]
        x = _windows(noisy, model)
        ys: list[np.ndarray] = []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                y = model(torch.from_numpy(x[i : i + batch]).to(device)).float().cpu().numpy()
                ys.extend(to_uint8_rgb(chw) for chw in y)
        y = np.stack(ys).astype(np.float32)
        centre = noisy[:, noisy.shape[1] // 2].astype(np.float32)
        out[name] = {"psnr": _psnr(y, clean), "noisy_psnr": _psnr(centre, clean),
                     "dark_bias": _dark_mean(y - clean, dark), "noisy_dark_bias": _dark_mean(centre - clean, dark)}
    return out


def _dark_mean(err: np.ndarray, dark: np.ndarray) -> float:
    return float(err.mean(axis=3)[dark].mean()) if dark.any() else 0.0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def mean_psnr(report: dict[str, dict[str, float]]) -> float:
    return float(np.mean([r["psnr"] for r in report.values()]))


def _shifts_shadows(candidate: dict[str, float], shipped: dict[str, float]) -> bool:
    """Whether one condition's dark-mean shift is beyond what the gate allows (module docstring)."""
    cand, ship = abs(candidate["dark_bias"]), abs(shipped["dark_bias"])
    return (cand > DARK_TOLERANCE + max(abs(candidate.get("noisy_dark_bias", 0.0)), ship)
            or cand > DARK_LIMIT >= ship
            or cand > max(DARK_FREE, ship + DARK_GROWTH))


class Comparison(NamedTuple):
    """What the gate and the calibration rule both read from two reports."""

    common: list[str]  # conditions in both
    gain: float  # mean PSNR difference over them (candidate - shipped)
    worse: list[str]  # below the noisy input where the shipped model was not
    lost: dict[str, float]  # conditions losing more than ``TOLERANCE_DB``: their difference


def compare(candidate: dict[str, dict[str, float]], shipped: dict[str, dict[str, float]]) -> Comparison:
    common = [n for n in candidate if n in shipped]
    return Comparison(
        common, float(np.mean([candidate[n]["psnr"] - shipped[n]["psnr"] for n in common])),
        [n for n in common if candidate[n]["psnr"] < candidate[n]["noisy_psnr"] <= shipped[n]["psnr"]],
        {n: candidate[n]["psnr"] - shipped[n]["psnr"] for n in common
         if candidate[n]["psnr"] < shipped[n]["psnr"] - TOLERANCE_DB})


def better(candidate: dict[str, dict[str, float]], shipped: dict[str, dict[str, float]]) -> tuple[bool, str]:
    """The gate: (keep the candidate?, why)."""
    common, gain, worse, lost = compare(candidate, shipped)
    if worse:
        return False, f"below the noisy input on {', '.join(worse)} (mean gain {gain:+.3f} dB)"
    shifted = {n: candidate[n]["dark_bias"] for n in common if _shifts_shadows(candidate[n], shipped[n])}
    if shifted:
        where = ", ".join(f"{n} ({b:+.2f} levels)" for n, b in shifted.items())
        return False, (f"shifts the dark regions' mean beyond what the noisy input and the shipped model allow on "
                       f"{where} (mean gain {gain:+.3f} dB)")
    if lost:
        return False, (f"mean {gain:+.3f} dB, but worse than the shipped model on "
                       + ", ".join(f"{n} ({d:+.2f} dB)" for n, d in lost.items()))
    if gain <= 0:
        return False, f"mean PSNR {gain:+.3f} dB against the shipped model"
    return True, f"mean PSNR {gain:+.3f} dB against the shipped model over {len(common)} conditions"


def calibrated(candidate: dict[str, dict[str, float]], shipped: dict[str, dict[str, float]]) -> tuple[bool, str]:
    """The rule for a ``MapCurve`` on the shipped weights (a trade, not an improvement): (keep?, why).
    It must bring some condition's shadows at least ``CURVE_GAIN`` levels closer to 0, push none
    farther from 0 than ``DARK_FREE`` or the shipped model's own shift, cost at most ``CURVE_COST_DB``
    mean PSNR and ``TOLERANCE_DB`` on any condition, and keep every condition above the noisy input
    where the shipped model was."""
    common, gain, worse, lost = compare(candidate, shipped)
    if worse:
        return False, f"below the noisy input on {', '.join(worse)}"
    if lost:
        return False, "worse than the shipped model on " + ", ".join(f"{n} ({d:+.2f} dB)" for n, d in lost.items())
    if gain < -CURVE_COST_DB:
        return False, f"costs {-gain:.3f} dB mean (at most {CURVE_COST_DB} allowed)"
    farther = [n for n in common
               if abs(candidate[n]["dark_bias"]) > max(DARK_FREE, abs(shipped[n]["dark_bias"])) + DARK_SAME]
    if farther:
        return False, "moves the shadows farther from 0 on " + ", ".join(
            f"{n} ({shipped[n]['dark_bias']:+.2f} -> {candidate[n]['dark_bias']:+.2f})" for n in farther)
    closer = {n: (shipped[n]["dark_bias"], candidate[n]["dark_bias"]) for n in common
              if abs(shipped[n]["dark_bias"]) - abs(candidate[n]["dark_bias"]) >= CURVE_GAIN}
    if not closer:
        return False, f"brings no condition's shadows {CURVE_GAIN} levels closer to 0"
    return True, (f"shadows closer to 0 on " + ", ".join(f"{n} ({a:+.2f} -> {b:+.2f})" for n, (a, b) in closer.items())
                  + f" for {-gain:.3f} dB mean")


def table(report: dict[str, dict[str, float]], other: dict[str, dict[str, float]] | None = None) -> str:
    """A text table of a report (and its difference to ``other``)."""
    rows = [f"{'condition':14s} {'noisy':>7s} {'psnr':>7s} {'dark':>6s}" + ("   delta" if other else "")]
    for n, r in report.items():
        d = f" {r['psnr'] - other[n]['psnr']:+7.2f}" if other and n in other else ""
        rows.append(f"{n:14s} {r['noisy_psnr']:7.2f} {r['psnr']:7.2f} {r['dark_bias']:+6.2f}{d}")
    rows.append(f"{'mean':14s} {'':7s} {mean_psnr(report):7.2f}")
    return "\n".join(rows)
