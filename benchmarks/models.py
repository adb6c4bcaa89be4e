"""Our network in the benchmarks: resolve a model, run it like the live pipeline, adapt it.

- ``resolve``: a shipped name (lite, base, lite-causal) or a .pt path -> the .pt file. A missing
  shipped file is an error unless ``allow_untrained`` (quick mode): then an untrained network of
  that architecture stands in, and every result says so.
- ``denoise_clip``: the clip through ``Denoiser.push``/``flush`` on a real backend, exactly as
  frames flow in the pipeline (window reflection at the stream's ends included).
- ``fine_tune``: stream_denoise's self-supervised fine-tuning on the recorded noisy half.
- ``supervised``: the upper bound: the same network, same start, same budget, trained with the
  clean recorded half as the target (pattern of ``stream_denoise.train.pretrain``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SHIPPED_ARCH = {"lite": ("lite", "centered"), "base": ("base", "centered"), "lite-causal": ("lite", "causal")}


@dataclass(frozen=True)
class ModelRef:
    name: str  # what results call it
    path: Path  # the .pt file
    untrained: bool = False


def resolve(name: str, cache: Path, allow_untrained: bool = False) -> ModelRef:
    from stream_denoise import model_files
    from stream_denoise.errors import ModelError

    try:
        if name.endswith("-int8"):  # the shipped INT8 (Q/DQ) ONNX of a model: ONNX Runtime only
            return ModelRef(name, model_files.resolve(name.removesuffix("-int8"), ".int8.onnx"))
        return ModelRef(name, model_files.resolve(name, ".pt"))
    except ModelError:
        if not (allow_untrained and name in SHIPPED_ARCH):
            raise
    from stream_denoise.model import create_model, save_model

    arch, window = SHIPPED_ARCH[name]
    path = cache / "models" / f"untrained-{name}.pt"
    if not path.exists():
        import torch

        torch.manual_seed(0)
        save_model(create_model(arch, window=window), path, trained="untrained placeholder (benchmarks --quick)")
    log.warning("shipped model %r is missing: using an UNTRAINED %s network (structure check only)", name, arch)
    return ModelRef(name, path, untrained=True)


def resolve_many(names: list[str], cache: Path, allow_untrained: bool = False) -> tuple[dict[str, ModelRef], dict[str, str]]:
    """(resolved models, {name: why skipped}): a missing model is reported, not fatal."""
    from stream_denoise.errors import ModelError

    refs, skipped = {}, {}
    for n in dict.fromkeys(names):
        try:
            refs[n] = resolve(n, cache, allow_untrained)
        except ModelError as exc:
            skipped[n] = str(exc)
            log.warning("model %s skipped: %s", n, exc)
    return refs, skipped


def macs_per_pixel(path: Path) -> float:
    """From the ONNX file's metadata (.onnx, or torch-less installs), else from the network."""
    try:
        if path.suffix == ".onnx":
            raise ImportError
        from stream_denoise.model import load_model
    except ImportError:
        from stream_denoise.model_files import onnx_file
        from stream_denoise.onnx_session import onnx_meta

        return float(onnx_meta(onnx_file(str(path)))["macs_per_pixel"])
    return float(load_model(path).macs_per_pixel())


def create_denoiser(path: Path, backend: str, threads: int, strength: float = 1.0):  # type: ignore[no-untyped-def]
    from stream_denoise.backends import create_backend
    from stream_denoise.config import ModelConfig
    from stream_denoise.denoiser import Denoiser

    return Denoiser(create_backend(ModelConfig(model=str(path), backend=backend, threads=threads)), strength=strength)


def denoise_clip(path: Path, clip: np.ndarray, backend: str = "onnxruntime", threads: int = 2,
                 strength: float = 1.0) -> tuple[np.ndarray, float]:
    """The clip through the streaming Denoiser; returns (denoised clip, seconds of pre+infer+post)."""
    from stream_denoise.frame import Frame

    den = create_denoiser(path, backend, threads, strength)
    try:
        outs = []
        t0 = time.perf_counter()
        for i, img in enumerate(clip):
            outs += den.push(Frame(np.ascontiguousarray(img), i, i / 25, time.time(), "bench"))
        outs += den.flush()
        seconds = time.perf_counter() - t0
    finally:
        den.backend.close()
    outs.sort(key=lambda f: f.index)
    if [f.index for f in outs] != list(range(len(clip))):
        raise RuntimeError(f"denoiser returned frames {[f.index for f in outs]} for {len(clip)} inputs")
    return np.stack([f.pixels for f in outs]), seconds


def fine_tune(init: Path, noisy: np.ndarray, out: Path, minutes: float, steps: int, threads: int, seed: int = 0) -> dict:
    """Self-supervised fine-tuning on the recorded noisy frames (no clean data)."""
    from stream_denoise.train.finetune import FineTune, fine_tune as ft

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # fresh checkpoint: never resume
        summary = ft([noisy], Path(tmp) / "model.pt", FineTune(init=str(init), minutes=minutes, steps=steps, seed=seed,
                                                             threads=threads, progress=False))
        shutil.move(Path(tmp) / "model.pt", out)
    return summary


def supervised(init: Path, noisy: np.ndarray, clean: np.ndarray, out: Path, minutes: float, steps: int, threads: int,
               seed: int = 0, batch: int = 8, patch: int = 96, lr: float = 3e-4) -> dict:
    """The same network and start as ``fine_tune``, trained with the clean recorded frames as targets
    (same batch, patch, learning rate, steps and minutes as the fine-tuning defaults)."""
    import torch

    from stream_denoise import noise_level
    from stream_denoise.model import load_model, save_model
    from stream_denoise.planes import window_input
    from stream_denoise.train.data import Pair, sample_windows
    from stream_denoise.train.loop import fit, use_bf16

    torch.set_num_threads(threads)
    model = load_model(init)
    pool = [Pair(noisy, clean)]
    patch = min(patch, min(noisy.shape[1:3]) // 4 * 4)
    sigmas = noise_level.estimate_clip(noisy, n=8)  # as fine_tune reads the recording

    def step_loss(r: np.random.Generator) -> torch.Tensor:
        x, c, _ = sample_windows(pool, batch, model.frames, model.target, patch, r)
        assert c is not None
        target = torch.from_numpy(np.ascontiguousarray(c.transpose(0, 3, 1, 2), dtype=np.float32) / 255)
        return torch.nn.functional.mse_loss(model(torch.from_numpy(window_input(x, model.layout, sigmas))), target)

    summary = fit(model, step_loss, steps=steps, minutes=minutes, lr=lr, seed=seed, checkpoint=None, progress=False,
                  bf16=use_bf16("auto", torch.device("cpu")))  # the same arithmetic as fine_tune on this machine
    save_model(model, out, trained="supervised on the recorded half (benchmark upper bound)", init=str(init), **summary)
    return summary
