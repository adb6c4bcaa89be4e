"""Supervised pre-training of the shipped models, accumulated over many short runs on any device.

    python -m stream_denoise.train.pretrain continue --model base --minutes 10   # GPU if visible, else CPU
    python -m stream_denoise.train.pretrain gate --model base --ship             # keep it if validation improves

GPU time comes in slices of minutes and CPU time in hours, so the training of each shipped model is
one long run cut into pieces: ``continue`` resumes from the committed state ``checkpoints/<model>.state``
(weights, averaged weights, Adam, the cumulative step, the sampler's generator and the pool's
position: ``loop.fit``'s checkpoint), trains for ``--minutes`` on whatever is present, and writes
the state back, with the run added to its history (device kind, steps, minutes). Resuming is exact:
a run continued from a state goes on bit for bit as the run that wrote it would have. Ctrl-C or
SIGTERM (a lent machine being taken back) stops it between steps and writes the state (a second
Ctrl-C interrupts at once).

Data (``pool``): clean clips from the corpus (``corpus``: natural photos with synthetic camera and
object motion, real footage; never the benchmark clips), each with one random camera condition
(``noise.random_spec``: Gaussian, Poisson-Gaussian across ISO levels, Bayer demosaicing, H.264/H.265
at CCTV bit rates) and its noise reading (``noise_level``), which the network gets as input maps.
A pool serves ``REUSE`` windows per clip, then the next generation (new motion, new noise) replaces
it. The learning rate warms up, stays, then decays with the square root of the cumulative step, so
any number of slices adds up to one schedule; the shipped weights are the moving average.

``gate`` scores the state's averaged weights, the midpoint between them and the shipped file's
(``midpoint``: both lie on one training trajectory, and the average of two of its points is often
better than either), and the shipped file on the held-out validation set (``validate``); with
``--ship`` it replaces the shipped ``.pt``/``.onnx`` with the better candidate that passes the gate,
recording steps, device-minutes per device kind, the corpus hash, noise ranges, which weights and
the validation figures in the model file. ``lite`` is distilled: its loss adds the squared difference
to the shipped ``base``'s estimate of the target (``Recipe.distill``), which the feed computes once
per pool over whole frames (``Sampler.teach``) rather than once per window (``lite-causal`` has no
causal teacher: clean targets alone).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..model import create_model, load_model, save_model
from ..model.checkpoint import model_meta
from ..model_files import MODELS_DIR
from ..noise import DARK_LEVEL
from ..model.net import VideoDenoiser
from ..noise_level import MapCurve
from . import validate
from .corpus import Corpus
from .corpus import load as load_corpus
from .loop import PRECISIONS, checkpoint_meta, fit, use_bf16
from .pool import CodecCache, Pool, PoolSpec, Sampler, build_pool

log = logging.getLogger(__name__)

REUSE = 400  # windows drawn per pool clip before the next generation replaces the pool
NOISE_RANGES = ("Gaussian sigma 0.5-60 (25 %); Poisson-Gaussian 30-30000 photons at white, read noise 0.5-8 e-, "
                "Bayer demosaicing 60 %, H.264/H.265 at 0.04-0.6 bit/pixel 50 % (65 %); codec alone (10 %)")


@dataclass(frozen=True)
class Recipe:
    arch: str
    window: str
    lr: float
    batch: dict[str, int]  # per device type (cpu, cuda)
    patch: dict[str, int]
    pool_clips: dict[str, int]
    warmup: int = 500
    decay_from: int = 20000  # lr ~ 1/sqrt(step) after this step
    average: float = 0.999
    distill: float = 0.0  # weight of the teacher (shipped base) term
    loss: str = "mse"  # or "root-mse" / "log-mse": each window's error weighed less steeply (``window_loss``)
    dark: float = 0.0  # weight of the dark-bias term (``window_loss``)
    seed: int = 0

    def schedule(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup) * min(1.0, math.sqrt(self.decay_from / (step + 1)))


RECIPES: dict[str, Recipe] = {
    "base": Recipe("base", "centered", lr=5e-4, batch={"cpu": 12, "cuda": 64}, patch={"cpu": 96, "cuda": 128},
                   pool_clips={"cpu": 400, "cuda": 2000}),
    "lite": Recipe("lite", "centered", lr=2e-3, batch={"cpu": 32, "cuda": 128}, patch={"cpu": 96, "cuda": 128},
                   pool_clips={"cpu": 400, "cuda": 2000}, distill=0.5, loss="root-mse"),
    "lite-causal": Recipe("lite", "causal", lr=2e-3, batch={"cpu": 32, "cuda": 128}, patch={"cpu": 96, "cuda": 128},
                          pool_clips={"cpu": 400, "cuda": 2000}, loss="root-mse"),  # no causal teacher: clean targets alone
}


def device_kind(dev: torch.device) -> str:
    if dev.type == "cuda":
        return "cuda:" + torch.cuda.get_device_name(dev)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu:{name} x{os.cpu_count()}"


class PoolFeed:
    """The pool a run draws from: built for the state's generation, replaced by the next one when
    its ``REUSE`` windows per clip are spent (``advance``, before every step)."""

    def __init__(self, corpus: Corpus, position: dict, clips: int, device: torch.device, workers: int,
                 cache: CodecCache | None, reuse: int = REUSE, teacher: VideoDenoiser | None = None,
                 bf16: bool = False) -> None:
        self.corpus, self.device, self.workers, self.cache, self.reuse = corpus, device, workers, cache, reuse
        self.teacher, self.bf16 = teacher, bf16
        self.seed, self.clips = int(position["seed"]), clips
        self.generation, self.left = start_generation(position, clips)
        if self.left <= 0:
            self.left = clips * reuse
        self.sampler: Sampler | None = None
        self._load()  # now, before CUDA starts in this process: its workers fork

    def _load(self) -> None:
        spec = PoolSpec(self.seed, self.generation, self.clips)
        self.sampler = None  # free the old pool first
        pool: Pool = build_pool(self.corpus, spec, self.workers, self.cache)
        self.sampler = Sampler(pool, self.device)
        if self.teacher is not None:  # one teacher pass per pool: its estimates are cut with the windows
            t = self.teacher.to(self.device)  # (after the first pool's workers forked: CUDA starts here)
            if self.bf16:
                t.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.sampler.teach(t, t.frames, t.target, self.bf16)

    def advance(self, batch: int) -> None:
        if self.left <= 0:
            self.generation += 1
            self.left = self.clips * self.reuse
            self._load()
        self.left -= batch

    def position(self) -> dict:
        return {"seed": self.seed, "generation": self.generation, "left": self.left, "clips": self.clips}


def start_generation(position: dict, clips: int) -> tuple[int, int]:
    """(generation, windows left) a run starts with from a state's pool position: the same pool
    where it has windows left and the same size; otherwise the next generation (a new state: 0)."""
    g = int(position["generation"])
    if "left" not in position:
        return g, 0
    if int(position["clips"]) == clips and int(position["left"]) > 0:
        return g, int(position["left"])
    return g + 1, 0


def fresh_meta(name: str, corpus: Corpus) -> dict:
    return {"model": name, "recipe": asdict(RECIPES[name]), "corpus": corpus.hash, "pool": {"seed": 0, "generation": 0},
            "history": [], "device_minutes": {}}


def run(name: str, minutes: float, corpus: Corpus, state_dir: Path, device: str = "auto", workers: int = 1,
        batch: int | None = None, patch: int | None = None, pool_clips: int | None = None,
        cache: CodecCache | None = None, max_steps: int | None = None, progress: bool = True,
        precision: str = "auto", checkpoint_every: int = 500, reuse: int | None = None) -> dict:
    """Continue ``name``'s pre-training for ``minutes`` (or until cumulative step ``max_steps``);
    ``reuse``: windows per pool clip before the next generation (default ``REUSE``; a GPU draws
    faster than a pool is made, so it takes more)."""
    t_start = time.monotonic()
    r = RECIPES[name]
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    kind = dev.type
    batch, patch = batch or r.batch[kind], patch or r.patch[kind]
    clips = pool_clips or r.pool_clips[kind]
    state = state_dir / f"{name}.state"
    prev = checkpoint_meta(state)
    step0, meta = prev if prev else (0, fresh_meta(name, corpus))
    if meta["corpus"] != corpus.hash:
        log.warning("corpus %s differs from the state's %s: training goes on with the new data", corpus.hash,
                    meta["corpus"])
        meta["corpus"] = corpus.hash
    meta["recipe"] = asdict(r)  # the latest run's (each run's loss is also in its history entry)
    torch.manual_seed(r.seed)
    model = create_model(r.arch, window=r.window)
    teacher = _teacher(model) if r.distill else None
    amp = use_bf16(precision, dev)
    feed = PoolFeed(corpus, meta["pool"], clips, dev, workers, cache, reuse or REUSE,  # workers start before CUDA
                    teacher=teacher, bf16=amp)
    model = model.to(dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dkind = device_kind(dev)
    entry = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "device": dkind,
             "from_step": step0, "batch": batch, "patch": patch, "pool_clips": clips, "loss": r.loss,
             **({"dark": r.dark} if r.dark else {})}
    log.info("pre-training %s (%s, %d params, %.0f MAC/pixel) on %s from step %d, batch %d x %d^2%s%s", name,
             r.window, model.param_count(), model.macs_per_pixel(), dkind, step0, batch, patch,
             ", bfloat16 autocast" if amp else "", f", distilled from base ({r.distill})" if teacher else "")
    t_fit = time.monotonic()

    def step_loss(rng: np.random.Generator) -> torch.Tensor:
        assert feed.sampler is not None
        x, c, z = feed.sampler.sample(batch, model.frames, model.target, patch, rng)
        return window_loss(model(x).float(), c, z, r.distill, r.loss, r.dark)

    def meta_now() -> dict:
        seconds = time.monotonic() - t_start
        mins = dict(meta["device_minutes"])
        mins[dkind] = round(mins.get(dkind, 0.0) + seconds / 60, 2)
        return {**meta, "pool": feed.position(), "device_minutes": mins,
                "history": meta["history"] + [{**entry, "seconds": round(seconds, 1)}]}

    summary = fit(model, step_loss, steps=max_steps or step0 + 10**9, minutes=minutes, lr=r.lr, seed=r.seed,
                  checkpoint=state, checkpoint_every=checkpoint_every, progress=progress, bf16=amp,
                  average=r.average, schedule=r.schedule, on_step=lambda _s: feed.advance(batch), meta=meta_now)
    log.info("%s: steps %d -> %d in %.1f min (%.0f steps/min; loss EMA %.6f); state %s%s", name, step0,
             summary["steps"], (time.monotonic() - t_fit) / 60,
             (summary["steps"] - step0) / max(1e-9, (time.monotonic() - t_fit) / 60), summary["loss_ema"] or 0, state,
             f" (stopped by {summary['stopped_by']})" if summary["stopped_by"] else "")
    return {**summary, "from_step": step0}


LOSS_FLOOR = 1e-5  # squared error (unit range) of 50 dB: below it a window weighs no more
TYPICAL_ERROR = 1e-3  # a typical window's squared error (30 dB): where each loss's gradient is ``mse``'s
DARK = DARK_LEVEL / 255  # clean values (mean of R, G, B) below this are dark, as in validation
DARK_PIXELS = 64  # a window with fewer dark pixels has no dark-bias term


def window_loss(y: torch.Tensor, clean: torch.Tensor, teacher: torch.Tensor | None, distill: float,
                kind: str = "mse", dark: float = 0.0) -> torch.Tensor:
    """The pre-training loss of a batch of estimates ``y`` (N, 3, H, W), from each window's squared
    error ``e`` to the clean target plus ``distill`` times that to the teacher's estimate:

    - ``mse``: the mean of ``e`` over the batch: the noisiest windows, whose errors are largest,
      steer training (a window at 30 dB weighs 10 times one at 40 dB);
    - ``log-mse``: the mean of log(e): minus the mean PSNR the validation scores, every window
      weighing the same in dB, the mildly noisy ones included (the network learns to leave a
      nearly clean picture alone);
    - ``root-mse``: the mean of sqrt(e), halfway (a window at 30 dB weighs 3.2 times one at 40 dB).

    ``e`` is floored at ``LOSS_FLOOR``, and each loss is scaled to ``mse``'s gradient at
    ``TYPICAL_ERROR``, so Adam's moments carry over when a run changes its loss.

    ``dark`` > 0 adds ``dark`` times the mean over windows of the squared dark bias: the mean
    error of the estimate (clipped to [0, 1], as every output is) where the clean value is below
    ``DARK``, in windows with at least ``DARK_PIXELS`` such pixels. The squared error alone is
    minimised by shrinking dark pixels towards their brighter surroundings under strong noise,
    which lifts the shadows' mean; this term asks for it to stay put."""
    err = (y - clean).square().flatten(1).mean(1)
    if teacher is not None:
        err = err + distill * (y - teacher).square().flatten(1).mean(1)
    if kind == "mse":
        loss = err.mean()
    elif kind == "log-mse":
        loss = TYPICAL_ERROR * torch.log(err + LOSS_FLOOR).mean()
    elif kind == "root-mse":
        loss = 2 * TYPICAL_ERROR**0.5 * torch.sqrt(err + LOSS_FLOOR).mean()
    else:
        raise ValueError(f"unknown pre-training loss {kind!r}")
    if not dark:
        return loss
    bias = dark_bias(y, clean)
    return loss + dark * bias.square().sum() / max(1, bias.numel())  # no dark window: no term (not nan)


def dark_bias(y: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per window with at least ``DARK_PIXELS`` dark pixels: the mean of the clipped estimate minus
    the clean value (over R, G, B) where the clean value is dark; an empty tensor if none has."""
    mask = (clean.mean(1) < DARK).flatten(1).float()
    err = (y.clamp(0, 1) - clean).mean(1).flatten(1)
    count = mask.sum(1)
    keep = count >= DARK_PIXELS
    return (err * mask).sum(1)[keep] / count[keep]


def _teacher(student: VideoDenoiser) -> VideoDenoiser | None:
    """The shipped base as the distillation teacher, frozen, on the CPU (the feed moves it); None
    (with a log line) where it cannot teach this student: not noise-aware yet, or another window or input."""
    m = load_model(MODELS_DIR / "base.pt").eval()
    if (m.in_channels, m.frames, m.target) != (student.in_channels, student.frames, student.target):
        log.warning("distillation: the shipped base (%d inputs, target %d) cannot teach this network (%d, %d); "
                    "clean targets alone", m.in_channels, m.target, student.in_channels, student.target)
        return None
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def averaged_model(name: str, state_dir: Path) -> tuple[VideoDenoiser, int, dict]:
    """The state's averaged weights as a model, its cumulative step and meta."""
    r = RECIPES[name]
    blob = torch.load(state_dir / f"{name}.state", weights_only=False, map_location="cpu")
    model = create_model(r.arch, window=r.window)
    model.load_state_dict(blob["model"])
    if "average" in blob:
        live = [v for v in model.state_dict().values() if v.is_floating_point()]
        with torch.no_grad():
            for v, a in zip(live, blob["average"]["avg"]):
                v.copy_(a)
    return model.eval(), int(blob["step"]), dict(blob.get("meta", {}))


MIDPOINT_SHARE = 0.5  # the shipped weights' share of the ``midpoint`` candidate


def midpoint(state: VideoDenoiser, shipped: VideoDenoiser, share: float = MIDPOINT_SHARE) -> VideoDenoiser | None:
    """A model whose floating-point weights are ``(1 - share) * state + share * shipped`` (a copy);
    None when the two are not the same network (architecture, window, or any tensor's shape)."""
    a, b = state.state_dict(), shipped.state_dict()
    same_net = (state.arch, state.frames, state.target) == (shipped.arch, shipped.frames, shipped.target)
    if not same_net or a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return None
    mix = copy.deepcopy(state)
    mix.load_state_dict({k: (1 - share) * a[k] + share * b[k] if a[k].is_floating_point() else a[k] for k in a})
    return mix.eval()


def _share(text: str) -> float:
    """--share: a fraction strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"the share must be a number strictly between 0 and 1, got {text!r}")
    return value


def _curve(text: str) -> MapCurve:
    """--curve: "knee,slope" (``MapCurve.to_meta``'s form)."""
    try:
        curve = MapCurve.from_meta(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"the map curve must be KNEE,SLOPE (e.g. 30,0.4), got {text!r}: {exc}")
    if curve is None:
        raise argparse.ArgumentTypeError("the map curve must be KNEE,SLOPE (e.g. 30,0.4), got an empty value")
    return curve


def gate(name: str, corpus: Corpus, state_dir: Path, ship: bool = False, threads: int | None = None,
         share: float = MIDPOINT_SHARE, curve: MapCurve | None = None) -> dict:
    """Validate the state's averaged weights, and their ``midpoint`` with the shipped file's (``share``
    of the shipped weights), against the shipped file; with ``ship`` replace the shipped .pt and .onnx
    by the candidate with the higher mean among those that pass the gate (``validate.better``).
    The candidates are read through the shipped file's map curve, or through ``curve`` when given
    (new weights may need their own calibration; the file then records it as chosen at the gate)."""
    if threads:
        torch.set_num_threads(threads)
    vset = validate.build(corpus)
    state_model, step, meta = averaged_model(name, state_dir)
    shipped_path = MODELS_DIR / f"{name}.pt"
    shipped, shipped_meta = load_model(shipped_path), model_meta(shipped_path)
    shipped_r = validate.score(shipped, vset)
    log.info("shipped %s:\n%s", name, validate.table(shipped_r))
    candidates = {"state": state_model}
    if (mix := midpoint(state_model, shipped, share)) is not None:
        candidates["midpoint"] = mix
    told = curve if curve is not None else shipped.map_curve
    for model in candidates.values():  # the shipped file's calibration (``MapCurve``) goes with its successor
        model.set_curve(told)
    log.info("candidates read through %s", "no map curve" if told is None else
             f"the map curve knee {told.knee:g} / slope {told.slope:g}"
             + (" (--curve)" if curve is not None else " (the shipped file's)"))
    results = {}
    for kind, model in candidates.items():
        r = validate.score(model, vset)
        keep, why = validate.better(r, shipped_r)
        results[kind] = (keep, why, r)
        what = ("averaged weights" if kind == "state" else
                f"midpoint with the shipped weights ({share:g} of them)")
        log.info("validation of %s's %s at step %d against the shipped file:\n%s\n%s: %s", name, what, step,
                 validate.table(r, shipped_r), kind, why)
    passing = [k for k, (keep, _, _) in results.items() if keep]
    best = max(passing, key=lambda k: validate.mean_psnr(results[k][2])) if passing else None
    why = "; ".join(f"{k}: {w}" for k, (_, w, _) in results.items())
    log.info("gate: %s -- %s", f"better ({best})" if best else "not better", why)
    if best is not None and ship:
        cand_r = results[best][2]
        weights = ("the state's averaged weights" if best == "state" else
                   f"the midpoint of the state's averaged weights and the file shipped before it "
                   f"({share:g} of its weights; it was at step {shipped_meta.get('steps')})")
        info = {"trained": "supervised on synthetic camera noise (pre-training that accumulates)",
                "steps": step, "weights": weights, "device_minutes": meta.get("device_minutes", {}),
                "history": meta.get("history", []), "corpus": meta.get("corpus"), "noise_ranges": NOISE_RANGES,
                "recipe": meta.get("recipe"), "validation": cand_r,
                "validation_set": {"hash": vset.hash, "conditions": vset.names},
                "shipped_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "window": RECIPES[name].window, "arch": RECIPES[name].arch}
        if curve is not None:  # a calibration chosen with these weights
            info["map_curve"] = asdict(curve) | {"chosen_at": info["shipped_at"], "by": "the gate (--curve)"}
        elif shipped.map_curve is not None:  # the calibration the successor keeps, with its record
            info["map_curve"] = shipped_meta.get("map_curve", asdict(shipped.map_curve))
        if best == "midpoint":
            info["previous"] = {k: shipped_meta.get(k) for k in ("steps", "weights", "validation", "shipped_at")}
        save_model(candidates[best], shipped_path, **info)
        from ..export.to_onnx import export_onnx

        export_onnx(shipped_path, shipped_path.with_suffix(".onnx"))
        log.info("shipped %s (.pt and .onnx): %s", shipped_path, weights)
    return {"keep": best is not None, "kept": best, "why": why, "step": step, "shipped": shipped_r,
            "candidates": {k: r for k, (_, _, r) in results.items()}}


def calibrate_curve(name: str, corpus: Corpus, curve: MapCurve, ship: bool = False) -> dict:
    """Validate the shipped file's weights with ``curve`` against the shipped file
    (``validate.calibrated``); with ``ship`` and a pass, rewrite the shipped .pt and .onnx with it."""
    vset = validate.build(corpus)
    path = MODELS_DIR / f"{name}.pt"
    shipped, meta = load_model(path), model_meta(path)
    shipped_r = validate.score(shipped, vset)
    cand = copy.deepcopy(shipped)
    cand.set_curve(curve)
    r = validate.score(cand, vset)
    keep, why = validate.calibrated(r, shipped_r)
    log.info("%s with the map curve (knee %g levels, slope %g) against the shipped file (%s):\n%s\n%s: %s", name,
             curve.knee, curve.slope, "no curve" if shipped.map_curve is None else asdict(shipped.map_curve),
             validate.table(r, shipped_r), "keep" if keep else "refused", why)
    if keep and ship:
        at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        save_model(cand, path, **(meta | {"validation": r, "map_curve": asdict(curve) | {
            "calibrated_at": at, "why": why, "validation_before": shipped_r}}))
        from ..export.to_onnx import export_onnx

        export_onnx(path, path.with_suffix(".onnx"))
        log.info("shipped %s (.pt and .onnx) with the map curve; remake its int8 copy where it has one "
                 "(export.calibrate.shipped_int8)", path)
    return {"keep": keep, "why": why, "shipped": shipped_r, "candidate": r}


def fill_codec_cache(name: str, corpus: Corpus, state_dir: Path, out: Path, device_kind_: str, workers: int,
                     pool_clips: int | None = None) -> int:
    """Encode the codec clips of the pool the next ``continue`` on ``device_kind_`` (cpu or cuda)
    starts with, for a machine without PyAV; returns how many files the cache holds."""
    prev = checkpoint_meta(state_dir / f"{name}.state")
    meta = prev[1] if prev else fresh_meta(name, corpus)
    clips = pool_clips or RECIPES[name].pool_clips[device_kind_]
    pos = meta["pool"]
    gen, _ = start_generation(pos, clips)
    cache = CodecCache(out)
    build_pool(corpus, PoolSpec(int(pos["seed"]), gen, clips), workers, cache)
    n = len(list(out.glob("*.mkv")))
    log.info("codec cache %s: %d clips for pool %d-%d (%.1f MB)", out, n, pos["seed"], gen,
             sum(p.stat().st_size for p in out.glob("*.mkv")) / 1e6)
    return n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m stream_denoise.train.pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", choices=list(RECIPES), default="base")
    common.add_argument("--corpus", type=Path, default=Path("corpus"), help="built corpus (train.corpus build)")
    common.add_argument("--state", type=Path, default=Path("checkpoints"), help="folder of the <model>.state files")
    common.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    common.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes that make the pools")
    c = sub.add_parser("continue", parents=[common], help="train for --minutes from the state")
    c.add_argument("--minutes", type=float, required=True,
                   help="training minutes, counted from the first step (the first pool and its teacher pass come "
                        "before it: minutes on a busy CPU)")
    c.add_argument("--max-steps", type=int, help="stop at this cumulative step")
    c.add_argument("--device", default="auto", help="auto (a CUDA GPU when present), cpu, cuda, cuda:N")
    c.add_argument("--batch", type=int)
    c.add_argument("--patch", type=int)
    c.add_argument("--pool-clips", type=int)
    c.add_argument("--reuse", type=int, help=f"windows per pool clip before the next pool (default {REUSE})")
    c.add_argument("--codec-cache", type=Path, help="encoded clips for a machine without PyAV (codec-cache)")
    c.add_argument("--precision", choices=PRECISIONS, default="auto")
    c.add_argument("--nice", type=int, default=0, help="niceness of this process and its pool workers")
    c.add_argument("--checkpoint-every", type=int, default=500)
    c.add_argument("--no-progress", action="store_true")
    g = sub.add_parser("gate", parents=[common], help="validate the state against the shipped file")
    g.add_argument("--ship", action="store_true", help="replace the shipped .pt/.onnx when the state is better")
    g.add_argument("--share", type=_share, default=MIDPOINT_SHARE,
                   help=f"the shipped weights' share of the midpoint candidate (default {MIDPOINT_SHARE:g})")
    g.add_argument("--curve", type=_curve, metavar="KNEE,SLOPE",
                   help="read the candidates through this map curve instead of the shipped file's")
    u = sub.add_parser("curve", parents=[common], help="validate the shipped file with a map curve (calibration)")
    u.add_argument("--knee", type=float, required=True, help="noise map level (8-bit) above which the curve rises")
    u.add_argument("--slope", type=float, required=True, help="extra told noise per level above the knee (0-2)")
    u.add_argument("--ship", action="store_true", help="rewrite the shipped .pt/.onnx with it when it passes")
    k = sub.add_parser("codec-cache", parents=[common], help="pre-encode the next pool's codec clips")
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("--for-device", choices=["cpu", "cuda"], default="cuda")
    k.add_argument("--pool-clips", type=int)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        corpus = load_corpus(a.corpus)
        if a.cmd == "continue":
            if a.nice:
                os.nice(a.nice)
            run(a.model, a.minutes, corpus, a.state, a.device, a.workers, a.batch, a.patch, a.pool_clips,
                CodecCache(a.codec_cache) if a.codec_cache else None, a.max_steps, not a.no_progress, a.precision,
                a.checkpoint_every, a.reuse)
        elif a.cmd == "gate":
            gate(a.model, corpus, a.state, a.ship, share=a.share, curve=a.curve)
        elif a.cmd == "curve":
            calibrate_curve(a.model, corpus, MapCurve(a.knee, a.slope), a.ship)
        else:
            fill_codec_cache(a.model, corpus, a.state, a.out, a.for_device, a.workers, a.pool_clips)
    except (ValueError, OSError) as exc:
        p.exit(2, f"pretrain: error: {exc}\n")


if __name__ == "__main__":
    main()
