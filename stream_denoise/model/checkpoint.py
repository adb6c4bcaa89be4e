"""Model files: a PyTorch checkpoint (``.pt``) holding the architecture, window and weights."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from ..noise_level import MapCurve
from .net import Arch, VideoDenoiser, from_v1_state

FORMAT = "stream_denoise/1"


def save_model(model: VideoDenoiser, path: str | Path, **meta: Any) -> Path:
    """Write atomically: architecture + window + weights + free-form metadata (training details)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "config": model.config(), "state_dict": state, "meta": meta}, tmp)
    tmp.replace(path)
    return path


def load_model(path: str | Path, map_location: str = "cpu") -> VideoDenoiser:
    """Load a ``.pt`` model file; any malformed or foreign file is a ModelError."""
    try:
        with warnings.catch_warnings():  # a foreign pickle warns before it fails; the error says it all
            warnings.simplefilter("ignore")
            blob = torch.load(Path(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except Exception as exc:  # torch raises many types for foreign/corrupt files
        raise ModelError(f"{path} is not a stream_denoise model file ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ModelError(f"{path} is not a stream_denoise model file (format {FORMAT} expected)")
    try:
        cfg = blob["config"]
        v1 = "widths" not in cfg["arch"]
        curve = MapCurve(**cfg["map_curve"]) if "map_curve" in cfg else None
        model = VideoDenoiser(Arch.from_dict(cfg["arch"]), cfg["frames"], cfg["target"], curve)
        model.load_state_dict(from_v1_state(blob["state_dict"]) if v1 else blob["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{path}: weights do not match the architecture ({exc.__class__.__name__})") from None
    model.meta = blob.get("meta", {})  # type: ignore[assignment]
    return model.eval()


def model_meta(path: str | Path) -> dict[str, Any]:
    return dict(getattr(load_model(path), "meta", {}))
