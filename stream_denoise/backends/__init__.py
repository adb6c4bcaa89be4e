"""Inference backends: one small interface, several implementations, one registry.

A backend runs the network on a batch of windows: ``infer(x)`` with x (N, K * (3 + noise_planes),
H, W) float32 (``planes.Layout``: frames oldest -> newest, each RGB in [0, 1] then its noise maps;
H, W multiples of ``stride``) returns (N, 3, H, W) float32. What else it can do it declares in its
:class:`Capabilities`; callers read that record and never probe for attributes.

Adding a backend: one module here with a class that satisfies :class:`Backend` and a
``from_config(cfg: ModelConfig)`` classmethod, and one line in :data:`REGISTRY`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..noise_level import MapCurve
    from .cuda_windows import GpuWindowRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares beyond ``infer``/``close``."""

    max_batch: int | None = None  # the most windows one ``infer`` call takes (None: no limit)
    lanes: int = 1  # windows worth handing over at once (ONNX Runtime's one-thread sessions run them together)
    device_windows: bool = False  # keeps windows on its device: callers use ``window_runner()``, not ``infer``


class Backend(Protocol):
    name: str
    frames: int  # K, window length
    target: int  # index in the window of the frame being denoised
    stride: int  # H and W must be multiples of this
    noise_planes: int  # noise maps after each frame's RGB (0: a network that is not noise-aware)
    map_curve: MapCurve | None  # what the maps are read through (``noise_level.MapCurve``), from the model file
    capabilities: Capabilities

    def infer(self, x: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class DeviceBackend(Backend, Protocol):
    """A backend with ``capabilities.device_windows``: frames go up once, windows stay on the device."""

    def window_runner(self) -> GpuWindowRunner: ...


# name -> (module, class, keyword arguments of its from_config): modules import lazily (torch, TensorRT, Triton)
REGISTRY: dict[str, tuple[str, str, dict[str, str]]] = {
    "onnxruntime": ("onnx_cpu", "OnnxRuntimeBackend", {}),
    "torch": ("torch_model", "TorchBackend", {"device": "cpu"}),
    "cuda": ("torch_model", "TorchBackend", {"device": "cuda"}),
    "tensorrt": ("tensorrt_engine", "TensorRTBackend", {}),
    "triton": ("triton_client", "TritonBackend", {}),
}
NAMES = ("auto", *REGISTRY)  # what ``--backend`` and ``[model] backend`` accept
AUTO_ORDER = ("tensorrt", "cuda")  # tried in turn where a GPU is visible, before onnxruntime


def factory(name: str) -> Callable[[ModelConfig], Backend]:
    """The ``from_config`` of the backend registered as ``name``."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    module, cls, kwargs = REGISTRY[name]
    impl = vars(importlib.import_module(f"{__name__}.{module}"))[cls]
    return lambda cfg: impl.from_config(cfg, **kwargs)  # type: ignore[no-any-return]


def create_backend(cfg: ModelConfig) -> Backend:
    """The backend named in ``cfg``; ``auto`` tries tensorrt, then cuda, then onnxruntime and says which."""
    if cfg.backend != "auto":
        return factory(cfg.backend)(cfg)
    from ..model_files import gpu_visible

    for name in AUTO_ORDER if gpu_visible() else ():
        try:
            backend = factory(name)(cfg)
            log.info("backend auto: using %s", name)
            return backend
        except BackendUnavailable as exc:
            log.info("backend auto: %s unavailable (%s)", name, exc)
    log.info("backend auto: using onnxruntime on the CPU%s", "" if gpu_visible() else " (no NVIDIA GPU visible)")
    return factory("onnxruntime")(cfg)
