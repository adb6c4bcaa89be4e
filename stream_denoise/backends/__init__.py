"""Inference backends: one small interface, several implementations, picked by name.

A backend runs the network on a batch of windows: ``infer(x)`` with x (N, K * (3 + noise_planes),
H, W) float32 (``planes.Layout``: frames oldest -> newest, each RGB in [0, 1] then its noise maps;
H, W multiples of ``stride``) returns (N, 3, H, W) float32.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from ..config import ModelConfig
from ..errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)


class Backend(Protocol):
    name: str
    frames: int  # K, window length
    target: int  # index in the window of the frame being denoised
    stride: int  # H and W must be multiples of this
    noise_planes: int  # noise maps after each frame's RGB (0: a network that is not noise-aware)
    # optional: ``max_batch`` (int), the most windows one ``infer`` call takes (default: no limit)

    def infer(self, x: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def _onnxruntime(cfg: ModelConfig) -> Backend:
    from .onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend.from_config(cfg)


def _torch(cfg: ModelConfig) -> Backend:
    from .torch import TorchBackend

    return TorchBackend.from_config(cfg, device="cpu")


def _cuda(cfg: ModelConfig) -> Backend:
    from .torch import TorchBackend

    return TorchBackend.from_config(cfg, device="cuda")


def _tensorrt(cfg: ModelConfig) -> Backend:
    from .tensorrt import TensorRTBackend

    return TensorRTBackend.from_config(cfg)


def _triton(cfg: ModelConfig) -> Backend:
    from .triton import TritonBackend

    return TritonBackend.from_config(cfg)


BACKENDS = {"onnxruntime": _onnxruntime, "torch": _torch, "cuda": _cuda, "tensorrt": _tensorrt, "triton": _triton}


def create_backend(cfg: ModelConfig) -> Backend:
    """The backend named in ``cfg``; ``auto`` tries tensorrt, then cuda, then onnxruntime and says which."""
    if cfg.backend != "auto":
        if cfg.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {cfg.backend!r}; choose one of auto, {', '.join(BACKENDS)}")
        return BACKENDS[cfg.backend](cfg)
    from ..zoo import gpu_visible

    for name in ("tensorrt", "cuda") if gpu_visible() else ():
        try:
            backend = BACKENDS[name](cfg)
            log.info("backend auto: using %s", name)
            return backend
        except BackendUnavailable as exc:
            log.info("backend auto: %s unavailable (%s)", name, exc)
    log.info("backend auto: using onnxruntime on the CPU%s", "" if gpu_visible() else " (no NVIDIA GPU visible)")
    return BACKENDS["onnxruntime"](cfg)
