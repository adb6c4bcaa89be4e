"""Fixtures of the GPU tests: skip with a reason where there is no CUDA GPU or no TensorRT.

Tests that need a GPU carry ``@pytest.mark.gpu`` and ask for the ``cuda`` (or ``trt``) fixture,
which skips them with the reason. Tests parametrised over ``device`` run the shared GPU code path
on the CPU everywhere and on the GPU where there is one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def cuda():
    """The torch module, with a CUDA GPU visible; else skip."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to PyTorch" + (" (CPU build of PyTorch)" if torch.version.cuda is None else ""))
    return torch


@pytest.fixture(scope="session")
def trt(cuda):
    """The tensorrt module (>= 10) on a CUDA machine; else skip."""
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or a wheel whose libraries are missing
        pytest.skip(f"TensorRT not installed ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})")
    if int(tensorrt.__version__.split(".")[0]) < 10:
        pytest.skip(f"TensorRT {tensorrt.__version__} < 10")
    return tensorrt


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> str:
    """'cpu' everywhere, 'cuda' where a GPU is visible (skipped otherwise)."""
    if request.param == "cuda":
        request.getfixturevalue("cuda")
    return request.param


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A lite network with non-trivial random weights, as a .pt file."""
    torch = pytest.importorskip("torch")
    from stream_denoise.model import create_model, save_model

    torch.manual_seed(7)
    model = create_model("lite")
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    return save_model(model, tmp_path_factory.mktemp("gpu-model") / "tiny.pt")


def _noisy_frames(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    """n (H, W, 3) uint8 RGB frames: a drifting gradient plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        img = np.stack([(xx + 2 * i) * 200 / w, yy * 200 / h, np.full((h, w), 90.0)], axis=-1) + 25
        out.append(np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8))
    return out


def _denoiser_outputs(backend, frames: list[np.ndarray]) -> list[np.ndarray]:
    """The reference: the CPU Denoiser (numpy pre/post, TemporalBuffer windows) over a stream."""
    from stream_denoise.denoiser import Denoiser
    from stream_denoise.frame import Frame

    den = Denoiser(backend)
    out = [o.pixels for i, f in enumerate(frames) for o in den.push(Frame(f, i, None, 0.0, "test"))]
    return out + [o.pixels for o in den.flush()]


def _runner_outputs(runner, frames: list[np.ndarray]) -> list[np.ndarray]:
    """The same stream through GpuWindowRunner.push/flush."""
    out = [y for y in (runner.push(f) for f in frames) if y is not None]
    return out + runner.flush()


@pytest.fixture(scope="session")
def noisy_frames():
    """``noisy_frames(n, h, w, seed=0)`` -> n (H, W, 3) uint8 RGB frames."""
    return _noisy_frames


@pytest.fixture(scope="session")
def denoiser_outputs():
    """``denoiser_outputs(backend, frames)``: the CPU Denoiser's outputs over a stream (the reference)."""
    return _denoiser_outputs


@pytest.fixture(scope="session")
def runner_outputs():
    """``runner_outputs(runner, frames)``: GpuWindowRunner.push/flush outputs over the same stream."""
    return _runner_outputs
