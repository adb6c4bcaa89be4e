"""TensorRT engines on NVIDIA GPUs (optional: needs the ``tensorrt`` package and a GPU)."""

from __future__ import annotations

from ..config import ModelConfig
from ..errors import BackendUnavailable


class TensorRTBackend:
    name = "tensorrt"

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> TensorRTBackend:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise BackendUnavailable(
                "TensorRT is not installed (see README 'GPU install' or docker/Dockerfile.gpu)"
            ) from None
        raise BackendUnavailable("the TensorRT runtime path is not built yet (issue: GPU inference)")
