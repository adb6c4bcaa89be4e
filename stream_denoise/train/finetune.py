"""Self-supervised fine-tuning on a camera's own noisy recordings (no clean reference).

    stream-denoise fine-tune rec1.mp4 rec2.mkv --out mycam.pt [--from lite] [--minutes 10]

1. Measure the noise of the recordings (level, spatial and temporal correlation).
2. Objective ``temporal`` (default, ``temporal.py``): targets are other frames of the recording
   aligned to the target frame by optical flow on the starting model's output (by noise level: the
   nearest frame on each side, left out of the input, or one or two on each side outside the
   window); the network learns to denoise every pixel, its own included.
   Values without a valid target (no frame aligns there, or 8-bit clipping) are held near the
   starting model's output (``temporal.ANCHOR_WEIGHT``).
   Objective ``masked`` (``masking.py``; also the fallback when too few pixels can be aligned, e.g.
   no model to start from): the blind spot, sized from the noise's spatial correlation.
3. Hold out the last 10% of each clip (at least K+1 frames, at most 30); the objective's loss on
   fixed held-out batches is the validation score, measured before training too, and the best
   weights seen are kept (early stopping; with ``temporal`` this keeps the starting model when
   training does not beat it on held-out frames).
4. Train (``loop.fit``) in bfloat16 autocast where the GPU or CPU runs it natively (``--precision``),
   keeping a moving average of the weights (``average``, decay 0.998), which is what is validated
   and kept: 2-min ``base`` fine-tunes, two seeds on four benchmark pairs (sigma 30 and ISO 1600 on
   bikes and carphone), +0.06 dB on average and the seed-to-seed difference 0.14 -> 0.06 dB.
5. Write a model file that ``run``, ``denoise`` and ``export`` accept.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .. import model_files
from ..model import VideoDenoiser, create_model, load_model, save_model
from .. import noise_level
from ..planes import to_unit_torch, window_input
from ..media import read_clip
from .data import Pair, sample_windows
from .loop import fit, use_bf16
from . import temporal
from .masking import MaskSpec, NoiseStats, masked_loss, measure_noise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTune:
    """How ``fine_tune`` trains: where it starts, the objective, the schedule and the machine."""

    init: str | None = "lite"  # the model to start from (a name or a .pt); None: a new ``arch``/``window`` network
    arch: str = "lite"
    window: str = "centered"
    objective: str = "temporal"  # or "masked" (the fallback when too few pixels align)
    minutes: float = 10.0
    steps: int = 3000
    batch: int = 8
    patch: int = 96
    lr: float = 3e-4
    seed: int = 0
    average: float = 0.998  # decay of the weights' moving average (0: none)
    precision: str = "auto"
    mask: MaskSpec | None = None  # the blind spot; None: sized from the measured noise
    max_frames: int = 300  # per recording read from a file
    threads: int | None = None
    progress: bool = True


def fine_tune(clips: Sequence[str | Path | np.ndarray], out: str | Path, opts: FineTune = FineTune()) -> dict:
    """Fit a model to recordings: each clip a video file or a decoded (T, H, W, 3) uint8 RGB clip.
    Writes ``out`` (and resumes from its ``.ckpt``); returns the training summary and the objective used."""
    init, arch, window, objective = opts.init, opts.arch, opts.window, opts.objective
    minutes, steps, batch, patch, lr, seed = opts.minutes, opts.steps, opts.batch, opts.patch, opts.lr, opts.seed
    average, mask = opts.average, opts.mask
    if opts.threads:
        torch.set_num_threads(opts.threads)
    data = [c if isinstance(c, np.ndarray) else read_clip(c, max_frames=opts.max_frames) for c in clips]
    files = [str(c) for c in clips if not isinstance(c, np.ndarray)]
    model = load_model(model_files.resolve(init, ".pt")) if init else create_model(arch, window=window)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    bf16 = use_bf16(opts.precision, device)
    log.info("fine-tuning on %s (%s)", device, "bfloat16 autocast" if bf16 else "float32")
    stats = measure_noise(data[0])
    # the camera's noise reading for a noise-aware network's maps, as a live stream's tracker makes it
    sigmas = np.median(np.stack([noise_level.estimate_clip(c, n=8) for c in data]), axis=0).astype(np.float32)

    def to_input(windows: np.ndarray) -> np.ndarray:
        return window_input(windows, model.layout, sigmas)

    mask = mask or stats.mask_spec()
    log.info("noise: sigma %.1f, spatial corr %.2f/%.2f, temporal corr %.2f, shadows/highlights %.2f -> blind spot r=%d%s",
             stats.sigma, *stats.spatial_corr, stats.temporal_corr, stats.shadow_ratio, mask.radius,
             " (tube)" if mask.tube else "")
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
    if objective == "temporal" and init is None:
        log.warning("no model to start from: the temporal objective needs one to align frames; using the masked objective")
        objective = "masked"
    anchor = temporal.ANCHOR_WEIGHT
    targets = None  # how the temporal objective chose its targets (recorded in the model file)
    pools = TemporalPools(objective, [], [], None, None)
    if objective == "temporal":
        pools = _temporal_pools(model, train, held, stats, sigmas)
        objective, pool, targets = pools.objective, pools.train, pools.how
    bias = pools.bias_on(device)
    vrng = np.random.default_rng(seed + 1)
    # the objective on fixed held-out batches: the validation score (and run --adapt's candidate check)
    val_losses = _held_out_batches(objective, pools.held, held, to_input, mask, stats.shadow_ratio, model.frames,
                                   model.target, batch, patch, vrng, device, bias)
    if objective == "temporal":
        linear = temporal.linear_for(stats.shadow_ratio)
        log.info("values without a valid target: pulled towards the starting model's output with weight %.1f; "
                 "errors in %s", anchor, "linear light (a sensor's noise)" if linear else "8-bit sRGB")
        if targets is not None:
            targets["loss"] = "linear light" if linear else "sRGB"

        def step_loss(r: np.random.Generator) -> torch.Tensor:
            b = _tensors(to_input, *temporal.sample(pool, batch, model.frames, model.target, patch, r), device)
            return temporal.loss(model, *b, anchor_weight=anchor, linear=linear, bias=bias)
    else:
        def step_loss(r: np.random.Generator) -> torch.Tensor:
            x, _, _ = sample_windows(train, batch, model.frames, model.target, patch, r)
            return masked_loss(model, torch.from_numpy(to_input(x)).to(device), mask, r)

    def validate() -> float:
        with torch.no_grad():
            return float(np.mean([loss(model).item() for loss in val_losses]))

    out = Path(out)
    summary = fit(model, step_loss, steps=steps, minutes=minutes, lr=lr, seed=seed,
                  checkpoint=out.with_suffix(".ckpt"), validate=validate if val_losses else None,
                  validate_every=100, progress=opts.progress, bf16=bf16, average=average)
    save_model(model, out, trained="self-supervised fine-tune", init=init or f"scratch:{arch}",
               clips=files, objective=objective, mask_radius=mask.radius, mask_tube=mask.tube,
               noise_sigma=stats.sigma, noise_shadow_ratio=round(stats.shadow_ratio, 3),
               noise_reading=sigmas.round(2).tolist() if model.arch.noise_planes else None, anchor_weight=anchor if objective == "temporal" else None,
               temporal_targets=targets, average=average or None, seed=seed,
               **summary)
    log.info("wrote %s: %d steps in %.0f s, held-out %s loss %s", out, summary["steps"], summary["seconds"], objective,
             f"{summary['best_val']:.6f}" if summary["best_val"] is not None else "n/a")
    return summary | {"objective": objective}


HeldOutLoss = Callable[[VideoDenoiser], torch.Tensor]


def _held_out_batches(objective: str, vpool: list[temporal.TemporalClip], held: list[np.ndarray],
                      to_input: Callable[[np.ndarray], np.ndarray], mask: MaskSpec, shadow_ratio: float, frames: int,
                      target: int, batch: int, patch: int, rng: np.random.Generator,
                      device: torch.device, bias: torch.Tensor | None = None) -> list[HeldOutLoss]:
    """Four fixed held-out batches of the objective, each a loss of any model of this layout (lower
    is better): ``temporal``, aligned targets only (anchor weight 0: it is no evidence; ``bias``:
    the training targets' black-bias table); ``masked``, the blind-spot loss with fixed masks."""
    out: list[HeldOutLoss] = []
    if objective == "temporal":
        linear = temporal.linear_for(shadow_ratio)
        for _ in range(4 if vpool else 0):
            b = _tensors(to_input, *temporal.sample(vpool, batch, frames, target, patch, rng), device)
            out.append(functools.partial(_temporal_held, b=b, linear=linear, bias=bias))
        return out
    vpool_m = [Pair(h, None) for h in held]
    for _ in range(4 if held else 0):
        x, _, _ = sample_windows(vpool_m, batch, frames, target, patch, rng)
        xt, sd = torch.from_numpy(to_input(x)).to(device), int(rng.integers(1 << 31))
        out.append(functools.partial(_masked_held, x=xt, mask=mask, seed=sd))
    return out


def _temporal_held(model: VideoDenoiser, b: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], linear: bool,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """The temporal objective on a held-out batch."""
    return temporal.loss(model, *b, anchor_weight=0.0, linear=linear, bias=bias)


def held_out_losses(reference: VideoDenoiser, others: Sequence[VideoDenoiser], clips: Sequence[np.ndarray],
                    objective: str = "temporal", seed: int = 0, batch: int = 8, patch: int = 96) -> tuple[str, list[float]]:
    """The fine-tuning criterion on held-out clips ((T, H, W, 3) uint8 RGB, never trained on) for
    ``reference`` and each of ``others`` (same layout), on the same fixed batches: the temporal
    objective's targets are aligned on ``reference``'s output, as ``fine_tune`` aligns them on its
    starting model's; ``masked`` (or too few aligned pixels): the blind-spot loss. Returns the
    objective used and the losses, reference first (lower is better)."""
    device = next(reference.parameters()).device
    data = list(clips)
    stats = measure_noise(data[0])
    sigmas = np.median(np.stack([noise_level.estimate_clip(c, n=8) for c in data]), axis=0).astype(np.float32)

    def to_input(windows: np.ndarray) -> np.ndarray:
        return window_input(windows, reference.layout, sigmas)

    pools = TemporalPools(objective, [], [], None, None)
    if objective == "temporal":  # (the first clip stands in for the training pool it also builds)
        pools = _temporal_pools(reference, [Pair(data[0], None)], data, stats, sigmas)
        objective = pools.objective if pools.held else "masked"
    patch = min(patch, *(min(c.shape[1:3]) // 4 * 4 for c in data))
    bias = pools.bias_on(device)
    losses = _held_out_batches(objective, pools.held, data, to_input, stats.mask_spec(), stats.shadow_ratio,
                               reference.frames, reference.target, batch, patch, np.random.default_rng(seed), device, bias)
    if not losses:
        raise ValueError("no held-out batch could be drawn from these clips")
    scores = []
    with torch.no_grad():
        for m in (reference, *others):
            m.eval()
            scores.append(float(np.mean([loss(m).item() for loss in losses])))
    return objective, scores


class TemporalPools(NamedTuple):
    """What ``_temporal_pools`` gives the temporal objective."""

    objective: str  # 'temporal', or 'masked' when too few pixels align between frames
    train: list[temporal.TemporalClip]
    held: list[temporal.TemporalClip]
    how: dict | None  # how the training targets were chosen (None with 'masked'): the model file's record
    bias: np.ndarray | None  # ``temporal.black_bias``'s table of the training clips (None with 'masked')

    def bias_on(self, device: torch.device) -> torch.Tensor | None:
        """The black-bias table as ``temporal.loss`` takes it."""
        return None if self.bias is None else torch.from_numpy(self.bias).to(device)


def _temporal_pools(model: VideoDenoiser, train: list[Pair], held: list[np.ndarray], stats: NoiseStats,
                    sigmas: np.ndarray) -> TemporalPools:
    """Aligned targets of the training and held-out clips, the objective they allow, how the
    targets were chosen and the black-bias table of the training clips."""
    # noise that is not independent from frame to frame (a codec copies it, or its rate control
    # alternates it: the CCTV-like condition measures -0.4 / -0.6): the nearest frames share it, and
    # the network learns the codec's look from them. Reach further for the target. CCTV-like, paired
    # (gap 2 / nearest frames): bikes base 30.42 / 30.02 dB (zero-shot 30.26), lite 30.26 / 30.08
    # (30.16); carphone base 26.55 / 26.27 (26.74: still below its start, see READING).
    gap = 2 if abs(stats.temporal_corr) > 0.3 else 0
    # ~1 sigma per channel (sigma is measured on luma): the clipping bias left at 1 sigma is < 0.1 sigma,
    # and a wider margin discards too much (2 sigma left 30 % of carphone's pixels at sigma 30; lite
    # fine-tuned 28.94 -> 29.35 dB with 24 levels, bikes sigma30 +0.25 dB, carphone ISO 1600 +0.10 dB)
    margin = min(np.sqrt(3) * stats.sigma, 48.0)
    # Towards black the targets stay, lowered by their measured clipping bias (``temporal.black_bias``)
    # up to ``low`` and fading out by ``BIAS_REACH`` times it; ``low`` grows with the shadows' noise (a
    # sensor's: ``shadow_ratio`` times the average there). Paired lite fine-tunes (3000 steps,
    # anchored; dB, mean error where the clean value is < 32), lowered targets / no target within
    # ``low`` (the margin this replaced): ISO 1600 bikes 36.99, +0.2 / 36.99, +2.2; carphone 35.16,
    # -0.0 / 35.22, +1.5; sigma 30 bikes 32.31, +1.8 / 32.28, +2.7 (zero-shot +1.9). The lift came
    # from the clipped targets just above the margin; a margin twice as wide removed it but cost
    # 0.3 / 0.5 dB (the shadows then learn nothing). base (1200 steps) bikes ISO 1600: 38.06, +0.6 /
    # 38.06, +2.2. Lowered all the way to twice ``low``: 36.92, -0.5 and 35.08, -0.7 (the starting
    # model's own shadow error is imposed over a wider range).
    low = min(margin * max(1.0, stats.shadow_ratio), 64.0)
    reach = temporal.reach_for(stats.sigma)
    near = gap == 0 and temporal.near_for(stats.sigma)  # held-out targets stay outside the full window (inference's input)

    def one(c: np.ndarray, nearest: bool) -> temporal.TemporalClip:
        r = 1 if nearest else reach  # t-1 and t+1 only: more would empty the window
        per_frame = (12 * r + 3) * c.shape[1] * c.shape[2]  # 2*reach targets and masks, the anchor: 3 channels each
        step = max(1, -(-len(c) * per_frame // temporal.TARGET_BYTES))
        return temporal.build(c, temporal.denoise_clip(model, c, sigmas), model.frames, model.target, gap, margin=(0.0, margin),
                              ts=list(range(0, len(c), step)), reach=r, near=nearest)

    pools = [[one(p.noisy, near) for p in train], [one(c, False) for c in held]]
    frac = float(np.mean([c.valid_fraction for c in pools[0]]))
    held_frac = float(np.mean([c.valid_fraction for c in pools[1]])) if held else 0.0
    log.info("temporal targets: %s, %.0f%% of training pixels aligned (%.0f%% held out), frame gap +%d, "
             "clipping margin %.0f (white); towards black targets lowered by their bias up to %.0f",
             "the nearest frame each side, left out of the input" if near else f"{reach} frame(s) each side outside the window",
             100 * frac, 100 * held_frac, gap, margin, temporal.BIAS_REACH * low)
    if frac < temporal.MIN_VALID or (held and held_frac < temporal.MIN_VALID):
        log.warning("too few pixels align between frames: falling back to the masked (blind-spot) objective")
        return TemporalPools("masked", [], [], None, None)
    bias = temporal.black_bias(pools[0], temporal.linear_for(stats.shadow_ratio), low)
    how = {"frames": "nearest" if near else "outside", "per_side": 1 if near else reach, "gap": gap,
           "clip_margin": [0.0, round(float(margin), 1)], "black_bias": {"upto": round(float(low), 1),
           "reach": temporal.BIAS_REACH, "max": round(float(bias.max()), 5)}, "aligned_fraction": round(frac, 3)}
    return TemporalPools("temporal", pools[0], [c for c in pools[1] if c.valid_fraction >= temporal.MIN_VALID], how, bias)


def _masked_held(model: VideoDenoiser, x: torch.Tensor, mask: MaskSpec, seed: int) -> torch.Tensor:
    """The masked objective on a held-out batch, with its own frozen masks."""
    return masked_loss(model, x, mask, np.random.default_rng(seed))


def _tensors(to_input: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tg: np.ndarray, v: np.ndarray,
             a: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    t, an = to_unit_torch(torch.from_numpy(tg).to(device)), to_unit_torch(torch.from_numpy(a).to(device))
    return torch.from_numpy(to_input(x)).to(device), t, torch.from_numpy(v).to(device).permute(0, 1, 4, 2, 3), an
