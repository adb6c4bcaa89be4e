"""The ONNX an engine is built from, in the precision asked: fp16/fp32 exported from the ``.pt``
(``model_files``' one cache), int8 a Q/DQ graph for TensorRT (symmetric int8)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import model_files
from ..errors import ConfigError, EngineError, ModelError
from ..model_files import PRECISIONS

log = logging.getLogger(__name__)


def has_qdq(path: str | Path) -> bool:
    """Whether an ONNX graph holds QuantizeLinear/DequantizeLinear nodes (False without the onnx package)."""
    try:
        import onnx
    except ImportError:
        return False
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


def _qdq_target(path: Path) -> str | None:
    """The ``target`` a Q/DQ ONNX was quantised for (export.quantize's metadata), or None if unrecorded."""
    from ..onnx_session import onnx_meta

    try:
        return str(json.loads(onnx_meta(path).get("quantization", "{}")).get("target")) or None
    except (ValueError, AttributeError):
        return None


def _tensorrt_qdq(path: Path) -> Path:
    """``path`` if its Q/DQ suits TensorRT (symmetric int8); EngineError for a CPU-flavoured one."""
    target = _qdq_target(path)
    if target == "cpu":
        raise EngineError(f"{path.name} was quantised for the CPU (uint8 activations), which TensorRT rejects: "
                          f"pass --calibration FILE.npz, or use stream-denoise calibrate --target tensorrt")
    if target is None:
        log.warning("%s does not record its quantisation target; assuming symmetric int8 Q/DQ", path.name)
    return path


def precision_onnx(model: str | Path, precision: str, calibration: str | Path | None = None) -> Path:
    """An ONNX file whose types say ``precision``, made once in the one cache (``model_files.cache_dir``).

    fp32/fp16: exported from the .pt (needs torch); an .onnx is used as is when its metadata says the
    same precision. int8: Q/DQ graph quantised for TensorRT (symmetric int8) from the fp32 ONNX and
    ``calibration`` (an .npz, see calibration/README.md) by export.quantize.quantize_int8; without
    calibration, a Q/DQ ONNX given as the model or shipped as ``<name>.tensorrt-int8.onnx``.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    name, src = model_files.source(model)
    if src.suffix == ".onnx":
        from ..onnx_session import onnx_meta

        have = "int8" if has_qdq(src) else onnx_meta(src).get("precision", "fp32")
        if have == precision:
            return _tensorrt_qdq(src) if have == "int8" else src
        if not (precision == "int8" and have == "fp32"):
            raise ModelError(f"{src} is an {have} ONNX; an {precision} engine needs the .pt model "
                             f"(or: stream-denoise export MODEL.pt --precision {precision})")
    if precision != "int8":
        return model_files.exported(src, precision)
    if calibration is None:
        shipped = model_files.MODELS_DIR / f"{name}.tensorrt-int8.onnx"
        if name in model_files.SHIPPED and shipped.exists():
            return _tensorrt_qdq(shipped)
        raise EngineError("an int8 engine needs calibration data: --calibration FILE.npz "
                          "(stream-denoise calibrate CLIP... makes one; see calibration/README.md)")
    calibration = Path(calibration)
    if not calibration.exists():
        raise EngineError(f"calibration file not found: {calibration}")
    try:
        from .quantize import quantize_int8
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.endswith("export.quantize"):
            raise EngineError("int8 needs stream_denoise.export.quantize, which this installation lacks") from None
        raise EngineError(f"int8 quantisation needs {exc.name}: pip install 'stream_denoise[torch]'") from None
    fp32 = src if src.suffix == ".onnx" else precision_onnx(model, "fp32")
    out = model_files.cache_dir() / f"{name}-int8-{model_files.digest(src, 12)}-{model_files.digest(calibration, 12)}.onnx"
    if not out.exists():
        log.info("quantising %s to int8 Q/DQ for TensorRT with %s", fp32.name, calibration)
        quantize_int8(fp32, calibration, out, target="tensorrt")
    return out
