"""ONNX Runtime sessions on the CPU, opened in one place: the options the project tunes, and ONNX
Runtime's own error types (Fail, InvalidProtobuf, NoSuchFile...) translated once into ModelError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ModelError


def open_session(path: str | Path, threads: int | None = None, spinning: bool = False,
                 optimized_path: str | Path | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU execution provider.

    threads: intra-op threads (None: ONNX Runtime's default, and its default spinning); with a
    number, one inter-op thread, sequential execution and all graph optimisations.
    optimized_path: also write the optimised graph there (what the runtime actually runs).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if optimized_path is not None:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # the boundary: onnxruntime raises its own Fail/InvalidProtobuf/NoSuchFile...
        raise ModelError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0][:200]}") from None


def onnx_meta(path: str | Path) -> dict[str, str]:
    """The metadata (``metadata_props``: the window, precision...) of an ONNX model."""
    return dict(open_session(path).get_modelmeta().custom_metadata_map)


def onnx_precision(path: str | Path) -> str:
    """The precision an ONNX file's metadata records (fp32 when it records none)."""
    return onnx_meta(path).get("precision", "fp32")
