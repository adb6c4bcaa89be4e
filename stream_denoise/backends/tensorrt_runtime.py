"""The TensorRT runtime, shared by the ``tensorrt`` backend and ``export.engine`` (which builds engines):
importing TensorRT (one line when it is missing or broken), its one logger, deserialising a plan,
an engine's optimisation profile (:class:`Shapes`) and a loaded engine (:class:`CachedEngine`).
Importing this module needs neither tensorrt nor torch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..errors import BackendUnavailable, ConfigError, EngineError

log = logging.getLogger(__name__)

PROFILE_STRIDE = 8  # profile sizes are multiples of every network's stride (4 or 8), so padded frames fit
T = TypeVar("T")


def parse_hw(text: str) -> tuple[int, int]:
    """``"720x1280"`` (height x width, pixels) -> (720, 1280)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise ConfigError(f"shape {text!r} must be HEIGHTxWIDTH in pixels, e.g. 720x1280")
    return int(m.group(1)), int(m.group(2))


def _round_up(hw: tuple[int, int], stride: int) -> tuple[int, int]:
    return (-(-hw[0] // stride) * stride, -(-hw[1] // stride) * stride)


@dataclass(frozen=True)
class Shapes:
    """The optimisation profile of the ``frames`` input, as frame sizes (H, W) in pixels and a batch.

    Sizes are rounded up to the network's stride (frames are reflect-padded to it before inference).
    The profile is (1..batch, C, min..max H, min..max W) for a network of C input channels
    (``planes.Layout.channels``), tuned for ``opt`` at ``batch``.
    """

    min: tuple[int, int] = (64, 64)
    opt: tuple[int, int] = (720, 1280)
    max: tuple[int, int] = (1080, 1920)
    batch: int = 1

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            hw = tuple(int(v) for v in getattr(self, name))
            if len(hw) != 2 or min(hw) <= 0:
                raise ConfigError(f"{name} shape {getattr(self, name)!r} must be two positive sizes (H, W)")
            object.__setattr__(self, name, _round_up(hw, PROFILE_STRIDE))  # type: ignore[arg-type]
        if not (self.min[0] <= self.opt[0] <= self.max[0] and self.min[1] <= self.opt[1] <= self.max[1]):
            raise ConfigError(f"shapes must satisfy min <= opt <= max in both H and W, got min {self.min}, "
                              f"opt {self.opt}, max {self.max}")
        if not 1 <= int(self.batch) <= 64:
            raise ConfigError(f"batch {self.batch} must be between 1 and 64")

    @classmethod
    def parse(cls, shape: str | None = None, min_shape: str | None = None, opt_shape: str | None = None,
              max_shape: str | None = None, batch: int = 1) -> Shapes:
        """From CLI strings: ``shape`` fixes one size (opt, and min/max unless given); else defaults
        (min 64x64, opt 720x1280, max 1080x1920) are overridden by whichever of min/opt/max is given."""
        d = cls()
        opt_text = opt_shape or shape
        opt = parse_hw(opt_text) if opt_text else None
        lo = parse_hw(min_shape) if min_shape else (opt if shape else None)
        hi = parse_hw(max_shape) if max_shape else (opt if shape else None)
        lo, hi = lo or d.min, hi or d.max
        if opt is None:  # keep the default opt inside the given range
            opt = (min(max(d.opt[0], lo[0]), hi[0]), min(max(d.opt[1], lo[1]), hi[1]))
        return cls(lo, opt, hi, batch)

    def profile(self, c: int) -> dict[str, list[int]]:
        """NCHW min/opt/max of the ``frames`` input of a network of ``c`` input channels."""
        return {"min": [1, c, *self.min], "opt": [self.batch, c, *self.opt], "max": [self.batch, c, *self.max]}

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any]) -> Shapes:
        return cls(tuple(profile["min"][2:]), tuple(profile["opt"][2:]), tuple(profile["max"][2:]),  # type: ignore[arg-type]
                   int(profile["max"][0]))


def import_tensorrt() -> Any:
    """The tensorrt module (>= 10), or BackendUnavailable with one line."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(
            "TensorRT is not installed: pip install 'stream_denoise[trt]' on a machine with an NVIDIA GPU "
            "(or use docker/Dockerfile.gpu)") from None
    except Exception as exc:  # a broken install (missing libnvinfer) raises OSError/RuntimeError
        raise BackendUnavailable(f"TensorRT cannot be loaded: {str(exc).splitlines()[0][:200]}") from None
    if major(trt.__version__) < 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__} is too old: stream_denoise needs TensorRT >= 10")
    return trt


def major(version: str) -> int:
    m = re.match(r"(\d+)", str(version))
    return int(m.group(1)) if m else 0


@dataclass
class CachedEngine(Generic[T]):
    """A loaded engine: its file, its manifest and what the loader made of its bytes."""

    path: Path
    manifest: dict[str, Any]
    engine: T
    built: bool  # True when this call built it, False for a cache hit


_LOGGER: Any = None


def trt_logger(trt: Any) -> Any:
    """The process's one trt.ILogger (TensorRT keeps a single global logger): forwards to logging and
    keeps the last error lines, for one-line messages."""
    global _LOGGER
    if _LOGGER is not None:
        return _LOGGER

    class Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            S = trt.ILogger.Severity
            if severity in (S.INTERNAL_ERROR, S.ERROR):
                self.errors = (self.errors + [msg])[-5:]
                log.error("TensorRT: %s", msg)
            elif severity == S.WARNING:
                log.warning("TensorRT: %s", msg)
            elif severity == S.INFO:
                log.debug("TensorRT: %s", msg)

    _LOGGER = Logger()
    return _LOGGER


def deserialize(trt: Any, runtime: Any, logger: Any, data: bytes) -> Any:
    """ICudaEngine from plan bytes; EngineError (with TensorRT's own reason) when it cannot."""
    logger.errors.clear()
    try:
        engine = runtime.deserialize_cuda_engine(data)
    except Exception as exc:  # some versions raise instead of returning None
        raise EngineError(f"TensorRT cannot deserialise the engine: {str(exc).splitlines()[0][:200]}") from None
    if engine is None:
        why = logger.errors[-1] if logger.errors else "incompatible or corrupt plan"
        raise EngineError(f"TensorRT cannot deserialise the engine: {why[:200]}")
    return engine
