"""Shipped models and how a ``--model`` value (name or path) becomes files. No torch here."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelError

MODELS_DIR = Path(__file__).parent / "models"
SHIPPED: dict[str, str] = {
    "lite": "real time on 2 CPU cores at 640x360, centered 5-frame window",
    "lite-causal": "lite with a causal window (past frames only, no look-ahead latency)",
    "base": "larger, for GPUs (about 4x the arithmetic of lite), centered 5-frame window",
}


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU device node exists (cheap: no torch, no CUDA initialisation)."""
    return os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES", "x") not in ("", "-1")


def default_model_name() -> str:
    """'base' where an NVIDIA GPU is visible, 'lite' otherwise."""
    return "base" if gpu_visible() else "lite"


def resolve(model: str, suffix: str | None = None) -> Path:
    """Path of a model given a shipped name (``lite``/``base``/``auto``) or a file path.

    suffix: ".pt" or ".onnx" to pick the shipped file of that kind; ignored for explicit paths.
    """
    name = default_model_name() if model == "auto" else model
    if name in SHIPPED:
        path = MODELS_DIR / f"{name}{suffix or '.onnx'}"
        if not path.exists():
            raise ModelError(f"shipped model {name!r} is missing its file {path.name}; reinstall the package")
        return path
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelError(f"model {model!r} is neither a file nor a shipped model ({', '.join(SHIPPED)})")
    if path.suffix not in (".pt", ".onnx"):
        raise ModelError(f"model file {path} must be .pt (PyTorch checkpoint) or .onnx")
    return path
