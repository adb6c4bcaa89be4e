"""The PyTorch model itself: the reference backend on the CPU (``torch``) and the GPU (``cuda``)."""

from __future__ import annotations

import logging

import numpy as np

from .. import zoo
from ..config import ModelConfig
from ..errors import BackendUnavailable

log = logging.getLogger(__name__)


class TorchBackend:
    def __init__(self, path: str, device: str = "cpu", threads: int | None = None, precision: str = "fp32") -> None:
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailable("the torch backend needs PyTorch: pip install 'stream_denoise[torch]'") from exc
        from ..model import STRIDE, load_model

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA GPU is visible to PyTorch")
        if threads and device == "cpu":
            torch.set_num_threads(threads)
        self.torch, self.device = torch, torch.device(device)
        self.model = load_model(path).to(self.device)
        self.dtype = torch.float16 if precision == "fp16" and device == "cuda" else torch.float32
        self.model = self.model.to(self.dtype)
        if device == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.frames, self.target, self.stride = self.model.frames, self.model.target, STRIDE
        self.name = "torch" if device == "cpu" else "cuda"
        log.info("%s: %s on %s (%s)", self.name, path, device, self.dtype)

    @classmethod
    def from_config(cls, cfg: ModelConfig, device: str) -> TorchBackend:
        return cls(str(zoo.resolve(cfg.model, ".pt")), device, cfg.threads, cfg.precision)

    def infer(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device, self.dtype)
            return self.model(t).float().cpu().numpy()

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
