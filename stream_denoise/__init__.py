"""stream_denoise: real-time self-supervised video denoising for live streams.

``import stream_denoise`` is light: numpy only. torch, onnxruntime, tensorrt, av and zmq are imported
by the modules that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import StreamDenoiseError
from .frame import Frame

__version__ = "0.1.0"
__all__ = ["Frame", "StreamDenoiseError", "Subscriber", "__version__"]

if TYPE_CHECKING:
    from .publish import Subscriber


def __getattr__(name: str) -> Any:
    if name == "Subscriber":
        from .publish import Subscriber

        return Subscriber
    raise AttributeError(name)
