"""The pre-training pool: clean clips from the corpus, one noisy version of each, their noise
readings, and a sampler that cuts training windows from it on the training device.

A pool is fully determined by its ``PoolSpec`` (seed, generation, size) and the corpus: clip ``i``
of generation ``g`` is drawn from ``np.random.default_rng([seed, g, i])`` -- 80 % photos with
synthetic motion (``synth.moving_clip``), 20 % crops of the corpus's real footage -- with its noise
condition from ``noise.random_spec`` and its noise reading from ``noise_level.estimate_clip``, so
the same spec gives the same pool whatever the number of worker processes. Codecs need PyAV (FFmpeg's
x264/x265); a machine without it (a GPU box) reads the encoded clips from a ``CodecCache`` that a
machine with it filled for the same spec, keyed by the job (``seed-generation-index``); a job
missing from it falls back to its sensor noise alone, and the builder says how many did.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import noise_level
from ..buffer import reflect_indices
from ..noise import NoiseSpec, add_noise, decode, encode, random_spec
from ..planes import to_unit_torch
from .corpus import Corpus
from .corpus import load as load_corpus
from .synth import clip_crop, moving_clip

log = logging.getLogger(__name__)

REAL_SHARE = 0.2


@dataclass(frozen=True)
class PoolSpec:
    seed: int
    generation: int
    clips: int
    frames: int = 8
    size: int = 256
    split: str = "train"

    def job_key(self, i: int) -> str:
        return f"{self.seed}-{self.generation}-{i}"


class CodecCache:
    """Encoded noisy clips by job key, one file each (``<key>.mkv``) in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, key: str) -> bytes | None:
        path = self.root / f"{key}.mkv"
        return path.read_bytes() if path.exists() else None

    def put(self, key: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{key}.mkv.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.root / f"{key}.mkv")


def has_codecs() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def clean_clip(corpus: Corpus, spec: PoolSpec, i: int) -> tuple[np.ndarray, np.random.Generator]:
    """Clip ``i`` of the pool (frames, size, size, 3) uint8 and the generator that continues its draws."""
    rng = np.random.default_rng([spec.seed, spec.generation, i])
    photos, clips = corpus.photos[spec.split], corpus.clips[spec.split]
    if clips and rng.random() < REAL_SHARE:
        clip = clips[int(rng.integers(len(clips)))]
        out = clip_crop(clip, spec.frames, spec.size, rng)
        if out.shape[1] != spec.size:  # footage smaller than the pool's clips: upscaling would blur it; tile by reflection
            pad = spec.size - out.shape[1]
            out = np.pad(out, ((0, 0), (0, pad), (0, pad), (0, 0)), mode="reflect")
        return out, rng
    idx = rng.choice(len(photos), size=min(len(photos), 1 + 3), replace=False)
    return moving_clip([photos[j] for j in idx], spec.frames, spec.size, rng), rng


def noisy_clip(clean: np.ndarray, rng: np.random.Generator, key: str, cache: CodecCache | None,
               coder: bool) -> tuple[np.ndarray, NoiseSpec, str]:
    """The noisy version of ``clean`` and its condition; the third value says where the codec's
    output came from: '' (no codec), 'encoded', 'cached' or 'missing' (sensor noise only)."""
    spec = random_spec(rng)
    sensor = add_noise(clean, replace(spec, codec=None), rng)
    if spec.codec is None:
        return sensor, spec, ""
    data = cache.get(key) if cache is not None else None
    how = "cached"
    if data is None and coder:
        data, how = encode(sensor, spec.codec, spec.bits_per_pixel, spec.fps), "encoded"
        if cache is not None:
            cache.put(key, data)
    out = _decoded(data) if data is not None else None
    if out is None or out.shape[:3] != clean.shape[:3]:
        return sensor, spec, "missing"
    return out, spec, how


def _decoded(data: bytes) -> np.ndarray | None:
    try:
        return decode(data)
    except (RuntimeError, OSError, ValueError) as exc:
        log.warning("an encoded clip does not decode here (%s)", exc)
        return None


_WORK: tuple[Corpus, PoolSpec, CodecCache | None, bool] | None = None  # what a worker process works on


def _init_worker(root: Path, spec: PoolSpec, cache: CodecCache | None, coder: bool) -> None:
    """A pool worker: a fresh interpreter (spawned: forking a process whose OpenCV or OpenMP thread
    pools are running can deadlock the child -- it hung every worker on a GPU machine) that loads the
    corpus itself."""
    global _WORK
    import cv2

    cv2.setNumThreads(1)
    _WORK = (load_corpus(root), spec, cache, coder)


def _job(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    assert _WORK is not None
    corpus, spec, cache, coder = _WORK
    clean, rng = clean_clip(corpus, spec, i)
    noisy, _, how = noisy_clip(clean, rng, spec.job_key(i), cache, coder)
    return clean, noisy, noise_level.estimate_clip(noisy), how


@dataclass
class Pool:
    spec: PoolSpec
    clean: np.ndarray  # (N, T, S, S, 3) uint8 RGB
    noisy: np.ndarray  # (N, T, S, S, 3) uint8 RGB
    sigmas: np.ndarray  # (N, PLANES, bands) float32: the noise reading of each noisy clip

    @property
    def luts(self) -> np.ndarray:
        """(N, PLANES, 256) float32 noise-map lookup tables (``noise_level.lut``)."""
        return np.stack([noise_level.lut(s) for s in self.sigmas])

    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.clean, self.noisy, self.sigmas):
            h.update(np.ascontiguousarray(a).data)
        return h.hexdigest()[:16]


def build_pool(corpus: Corpus, spec: PoolSpec, workers: int = 1, cache: CodecCache | None = None) -> Pool:
    """Make the pool of ``spec`` with ``workers`` processes (same result for any number), logging
    its progress."""
    global _WORK
    coder = has_codecs()
    t0 = time.monotonic()
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]] = []
    step = max(1, spec.clips // 10)

    def progress() -> None:
        if len(out) % step == 0 or len(out) == spec.clips:
            log.info("pool %s: %d/%d clips (%.0f s)", spec.job_key(0)[:-2], len(out), spec.clips, time.monotonic() - t0)

    if workers > 1:  # a worker that dies fails the build (BrokenProcessPool) rather than being replaced forever
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp.get_context("spawn"), _init_worker, (corpus.root, spec, cache, coder)) as ex:
            for res in ex.map(_job, range(spec.clips), chunksize=2):
                out.append(res)
                progress()
    else:
        _WORK = (corpus, spec, cache, coder)
        try:
            for i in range(spec.clips):
                out.append(_job(i))
                progress()
        finally:
            _WORK = None
    hows = [o[3] for o in out]
    pool = Pool(spec, np.stack([o[0] for o in out]), np.stack([o[1] for o in out]), np.stack([o[2] for o in out]))
    log.info("pool %s: %d clips of %dx%d^2 in %.0f s (%d workers); codec: %d encoded, %d cached, %d missing%s",
             spec.job_key(0)[:-2], spec.clips, spec.frames, spec.size, time.monotonic() - t0, workers,
             hows.count("encoded"), hows.count("cached"), hows.count("missing"),
             "" if coder or not hows.count("missing") else " (no PyAV here: those clips have sensor noise only)")
    return pool


def _dihedral(patch: int) -> tuple[np.ndarray, np.ndarray]:
    """The eight dihedral transforms of a (P, P) patch as index maps (Y, X), each (8, P, P):
    out[i, j] = in[Y[d, i, j], X[d, i, j]] (d % 4 quarter turns; d >= 4 also mirrored)."""
    y, x = np.meshgrid(np.arange(patch), np.arange(patch), indexing="ij")
    ys, xs = [], []
    for d in range(8):
        a, b = y, x
        for _ in range(d % 4):  # rot90 counter-clockwise: out[i, j] = in[j, P-1-i]
            a, b = b, patch - 1 - a
        if d >= 4:
            b = patch - 1 - b
        ys.append(a)
        xs.append(b)
    return np.stack(ys), np.stack(xs)


class Sampler:
    """Training windows cut on ``device`` from a pool: (N, K * (3 + PLANES), P, P) float32 inputs
    (each frame of the window in [0, 1] followed by its noise maps: ``net`` describes the layout)
    and (N, 3, P, P) clean target frames. Windows reflect at a clip's ends without repeating the target frame
    (``buffer.reflect_indices``); augmentation: the eight dihedral transforms and, for centered
    windows, time reversal; the noise maps are jittered by a random factor (``jitter``, log-std)
    so the network tolerates the spread of live readings. One gather per batch.

    ``teach`` runs a teacher network once over every frame of the pool (whole frames, the window
    without reversal or jitter) and keeps its output; ``sample`` then also cuts the teacher's
    (N, 3, P, P) estimate at each target's place, so distillation costs one teacher pass per pool
    rather than one per window."""

    def __init__(self, pool: Pool, device: torch.device, jitter: float = 0.08) -> None:
        self.device, self.jitter = device, jitter
        self.clean = torch.from_numpy(pool.clean).to(device)
        self.noisy = torch.from_numpy(pool.noisy).to(device)
        self.luts = torch.from_numpy(pool.luts).to(device)
        self.n, self.t_len, self.size = pool.clean.shape[0], pool.clean.shape[1], pool.clean.shape[2]
        self._grids: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.taught: torch.Tensor | None = None  # (N, T, S, S, 3) float16 in [0, 1]: ``teach``

    def _grid(self, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if patch not in self._grids:
            ys, xs = _dihedral(patch)
            self._grids[patch] = (torch.from_numpy(ys).to(self.device), torch.from_numpy(xs).to(self.device))
        return self._grids[patch]

    def sample(self, batch: int, frames: int, target: int, patch: int,
               rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(inputs, clean targets, the teacher's estimates or None before ``teach``)."""
        j = rng.integers(self.n, size=batch)
        t = rng.integers(self.t_len, size=batch)
        win = np.array([reflect_indices(int(ti), frames, target, self.t_len) for ti in t])
        if target == frames // 2:
            rev = rng.random(batch) < 0.5
            win[rev] = win[rev, ::-1]
        y0 = rng.integers(self.size - patch + 1, size=batch)
        x0 = rng.integers(self.size - patch + 1, size=batch)
        d = rng.integers(8, size=batch)
        gain = np.exp(rng.normal(0.0, self.jitter, batch)).astype(np.float32)
        dev = self.device
        ys, xs = self._grid(patch)
        jt, dt = torch.from_numpy(j).to(dev), torch.from_numpy(d).to(dev)
        Y = ys[dt] + torch.from_numpy(y0).to(dev)[:, None, None]  # (B, P, P)
        X = xs[dt] + torch.from_numpy(x0).to(dev)[:, None, None]
        x = self._inputs(jt, torch.from_numpy(win).to(dev), Y, X, torch.from_numpy(gain).to(dev))
        tt = torch.from_numpy(t).to(dev)[:, None, None]
        c = to_unit_torch(self.clean[jt[:, None, None], tt, Y, X])  # (B, 3, P, P)
        z = None if self.taught is None else self.taught[jt[:, None, None], tt, Y, X].movedim(-1, -3).float()
        return x, c, z

    def _inputs(self, jt: torch.Tensor, fr: torch.Tensor, Y: torch.Tensor, X: torch.Tensor,
                gain: torch.Tensor) -> torch.Tensor:
        """Windows of clips ``jt`` (B,), frames ``fr`` (B, K), pixels (``Y``, ``X``) (B, P, P), maps
        times ``gain`` (B,): (B, K * (3 + PLANES), P, P)."""
        batch, k, patch, planes = fr.shape[0], fr.shape[1], Y.shape[-1], self.luts.shape[1]
        w = self.noisy[jt[:, None, None, None], fr[:, :, None, None], Y[:, None], X[:, None]]  # (B, K, P, P, 3)
        maps = noise_level.level_map_torch(w.flatten(0, 1), self.luts[jt].repeat_interleave(k, 0))  # (B*K, P, p, p)
        maps = maps.view(batch, k, planes, patch, patch) * gain[:, None, None, None, None]
        x = torch.cat([to_unit_torch(w), maps], dim=2)  # (B, K, 3 + P, p, p)
        return x.reshape(batch, k * (3 + planes), patch, patch)

    def teach(self, teacher: torch.nn.Module, frames: int, target: int, bf16: bool = False, batch: int = 4) -> None:
        """Keep ``teacher``'s estimate of every frame of the pool (float16, (N, T, S, S, 3))."""
        self.taught = None
        dev, s, t0 = self.device, self.size, time.monotonic()
        out = torch.empty((self.n, self.t_len, s, s, 3), dtype=torch.float16, device=dev)
        pairs = [(j, t) for j in range(self.n) for t in range(self.t_len)]
        grid = torch.arange(s, device=dev)
        step = max(1, len(pairs) // batch // 10) * batch
        for i in range(0, len(pairs), batch):
            jt = torch.tensor([p[0] for p in pairs[i:i + batch]], device=dev)
            tt = torch.tensor([p[1] for p in pairs[i:i + batch]], device=dev)
            fr = torch.tensor([reflect_indices(p[1], frames, target, self.t_len) for p in pairs[i:i + batch]],
                              device=dev)
            n = len(jt)
            x = self._inputs(jt, fr, grid[None, :, None].expand(n, s, s), grid[None, None, :].expand(n, s, s),
                             torch.ones(n, device=dev))
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                z = teacher(x.contiguous(memory_format=torch.channels_last) if bf16 else x)
            out[jt, tt] = z.float().clamp_(0, 1).movedim(1, -1).half()
            if (i + batch) % step == 0:
                log.info("teacher: %d/%d frames (%.0f s)", min(i + batch, len(pairs)), len(pairs), time.monotonic() - t0)
        self.taught = out
        log.info("teacher: %d frames of %d clips in %.0f s", len(pairs), self.n, time.monotonic() - t0)
