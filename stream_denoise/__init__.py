"""stream_denoise: real-time self-supervised video denoising for live streams.

``import stream_denoise`` is light: numpy only. The public names below resolve on first use, so
torch, onnxruntime, tensorrt, av and zmq are imported by the modules that use them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (BackendUnavailable, ConfigError, EngineError, ModelError, OutputError, PublishError,
                     SourceError, SourceTimeout, StreamDenoiseError)
from .frame import Frame

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first use)
_LAZY = {
    "Backend": "backends", "Capabilities": "backends", "create_backend": "backends",
    "ModelConfig": "config", "RunConfig": "config", "DeploymentConfig": "config", "check_config": "config_file",
    "Denoiser": "denoiser", "denoise_file": "offline", "Pipeline": "pipeline", "MultiCamera": "multicam",
    "Publisher": "publish", "Subscriber": "subscribe", "record": "subscribe", "keygen": "sockets",
    "resolve_model": "model_files",
}
__all__ = ["BackendUnavailable", "ConfigError", "EngineError", "Frame", "ModelError", "OutputError", "PublishError",
           "SourceError", "SourceTimeout", "StreamDenoiseError", "__version__", *_LAZY]

if TYPE_CHECKING:
    from .backends import Backend, Capabilities, create_backend
    from .config import DeploymentConfig, ModelConfig, RunConfig
    from .config_file import check_config
    from .denoiser import Denoiser
    from .model_files import resolve as resolve_model
    from .multicam import MultiCamera
    from .offline import denoise_file
    from .pipeline import Pipeline
    from .publish import Publisher
    from .sockets import keygen
    from .subscribe import Subscriber, record


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'stream_denoise' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name]}", __name__)
    return vars(module)["resolve" if name == "resolve_model" else name]
