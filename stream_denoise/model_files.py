"""The one model resolver: how a ``--model`` value (shipped name, ``auto`` or a path) becomes the file a
backend runs, with the one export cache. No torch here.

- :func:`resolve`: the shipped file of a kind (``.pt``, ``.onnx``, ``.int8.onnx``) or the given path.
- :func:`onnx_file`: an ONNX file in a precision (fp32, fp16, int8); a ``.pt`` is exported once into
  :func:`cache_dir` (needs torch), keyed by the hash of its bytes and the precision.
- :func:`tensorrt_engine`: the cached TensorRT engine for a model, built on a miss (``export.engine``).

Backends and ``export/`` both come here; ``backends/`` never imports ``export/``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from .errors import ModelError

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).parent / "models"
SHIPPED: dict[str, str] = {
    "lite": "real time on 2 CPU cores at 640x360, centered 5-frame window",
    "lite-causal": "lite with a causal window (past frames only, no look-ahead latency)",
    "base": "larger, for GPUs (about 4x the arithmetic of lite), centered 5-frame window",
}
PRECISIONS = ("fp32", "fp16", "int8")


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU device node exists (cheap: no torch, no CUDA initialisation)."""
    return os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES", "x") not in ("", "-1")


def default_model_name() -> str:
    """'base' where an NVIDIA GPU is visible, 'lite' otherwise."""
    return "base" if gpu_visible() else "lite"


def for_window(model: str, window: str | None) -> str:
    """The model a window asks for: ``causal`` turns the default (``auto``/``lite``) into ``lite-causal``
    (the one place this rewrite happens)."""
    return "lite-causal" if window == "causal" and model in ("auto", "lite") else model


def resolve(model: str, suffix: str | None = None) -> Path:
    """Path of a model given a shipped name (``lite``/``base``/``auto``) or a file path.

    suffix: ".pt", ".onnx" or ".int8.onnx" to pick the shipped file of that kind; ignored for paths.
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


def model_name(model: str | Path) -> str:
    """A model's short name: a shipped name as is (``auto`` resolved for this machine), else the file's
    stem up to its first dot (``mycam.pt`` -> ``mycam``)."""
    name = default_model_name() if str(model) == "auto" else str(model)
    return name if name in SHIPPED else Path(model).name.split(".")[0]


def source(model: str | Path) -> tuple[str, Path]:
    """(name, file) of a model: a shipped name prefers its .pt (what fp16 export needs), else its .onnx."""
    name = model_name(model)
    if name in SHIPPED:
        for suffix in (".pt", ".onnx"):
            p = MODELS_DIR / f"{name}{suffix}"
            if p.exists():
                return name, p
        return name, resolve(name, ".pt")  # raises the usual ModelError
    return name, resolve(str(model))


def cache_dir() -> Path:
    """The one cache of files made from models (ONNX exports, INT8 quantisations):
    ``$STREAM_DENOISE_CACHE/onnx``, default ``~/.cache/stream_denoise/onnx``."""
    return Path(os.environ.get("STREAM_DENOISE_CACHE", Path.home() / ".cache" / "stream_denoise")) / "onnx"


def digest(path: str | Path, n: int = 16) -> str:
    """The first ``n`` hex digits of the sha256 of a file's bytes (read in blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def exported(pt: Path, precision: str = "fp32") -> Path:
    """The ONNX export of a ``.pt`` in ``precision`` (fp32/fp16), made once in :func:`cache_dir`."""
    tag = "" if precision == "fp32" else f"-{precision}"
    out = cache_dir() / f"{pt.stem}{tag}-{digest(pt)}.onnx"
    if out.exists():
        return out
    try:
        from .export.to_onnx import export_onnx
    except ModuleNotFoundError as exc:  # the default install has no torch: say what to do, in one line
        raise _needs_torch(pt, exc) from None
    log.info("exporting %s to ONNX %s (once, cached at %s)", pt, precision, out)
    try:
        export_onnx(pt, out, "fp16" if precision == "fp16" else "fp32")
    except ModuleNotFoundError as exc:
        raise _needs_torch(pt, exc) from None
    return out


def _needs_torch(pt: Path, exc: ModuleNotFoundError) -> Exception:
    if (exc.name or "").split(".")[0] not in ("torch", "onnx", "onnxscript"):
        return exc
    return ModelError(f"{pt} is a PyTorch model; running it needs torch to export it to ONNX once: "
                      f"pip install 'stream_denoise[torch]', or give the .onnx file (`stream-denoise export`)")


def onnx_file(model: str, precision: str = "fp32") -> Path:
    """An ONNX file of ``model`` in ``precision``.

    fp32: a shipped name's ``.onnx``, a given ``.onnx`` as is, a ``.pt`` exported (cached).
    int8: a shipped name's ``.int8.onnx`` (CPU Q/DQ), a given ``.onnx`` as is.
    fp16: exported from the ``.pt`` (cached); a given ``.onnx`` only when its metadata says fp16.
    """
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16":
        _, src = source(model)
        if src.suffix == ".onnx":
            from .onnx_session import onnx_precision

            have = onnx_precision(src)
            if have != "fp16":
                raise ModelError(f"{src} is an {have} ONNX; fp16 needs the .pt model "
                                 f"(or: stream-denoise export MODEL.pt --precision fp16)")
            return src
        return exported(src, "fp16")
    path = resolve(model, ".int8.onnx" if precision == "int8" else ".onnx")
    return path if path.suffix == ".onnx" else exported(path)


def tensorrt_engine(model: str, precision: str, engines_dir: str | Path) -> tuple[Any, Any]:
    """(cached engine, owner) for ``model``: any cached engine for this model/precision/GPU/versions in
    ``engines_dir`` (the widest profile), else one built with the default profile. See
    ``export.engine.find_or_build``."""
    from .export.engine import find_or_build

    return find_or_build(model, precision, None, engines_dir)
