"""TensorRT engines on NVIDIA GPUs (optional: needs the ``tensorrt`` package, PyTorch with CUDA and a GPU).

``from_config`` finds the cached engine for the model/precision/GPU/versions in ``engines_dir`` (any
profile; the widest) or builds one with the default profile (see ``model_files.tensorrt_engine``, ``export.engine``). Inference runs
through the shared GPU path (``backends.cuda_windows``): I/O in torch CUDA tensors bound with
``set_tensor_address``, ``execute_async_v3`` on a dedicated stream, CUDA graphs after one warm run.
Importing this module needs neither tensorrt nor torch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from ..errors import EngineError
from ..planes import Layout
from ..strict import Strict
from . import Capabilities

if TYPE_CHECKING:
    from ..config import ModelConfig
    import torch

    from .tensorrt_runtime import CachedEngine, Shapes
    from .cuda_windows import GpuWindowRunner

log = logging.getLogger(__name__)


class TensorRTOptions(Strict):
    """``[model.tensorrt]``: the ``tensorrt`` backend's own options."""

    engines_dir: Path = Field(Path("engines"), description="Where TensorRT engines and their manifests are cached.")


class TrtRunner:
    """cuda_windows.Runner for an ICudaEngine with one input (``frames``) and one output."""

    def __init__(self, trt: Any, torch: Any, engine: Any, shapes: Shapes | None = None) -> None:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(f"the engine has inputs {inputs} and outputs {outputs}; one of each expected")
        self.torch, self.engine, self.shapes = torch, engine, shapes
        self.in_name, self.out_name = inputs[0], outputs[0]
        self.dtype = _torch_dtype(trt, torch, engine.get_tensor_dtype(self.in_name))
        self.out_dtype = _torch_dtype(trt, torch, engine.get_tensor_dtype(self.out_name))
        self.memory_format = torch.contiguous_format  # data_ptr() must be NCHW memory
        self.in_channels: int | None = None
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
        self._y: torch.Tensor | None = None

    @property
    def max_batch(self) -> int | None:
        """The profile's largest batch (the window runner never rounds a batch up past it)."""
        return self.shapes.batch if self.shapes is not None else None

    def prepare(self, x: torch.Tensor) -> None:
        n, _, h, w = (int(v) for v in x.shape)
        s = self.shapes
        if s is not None and not (n <= s.batch and s.min[0] <= h <= s.max[0] and s.min[1] <= w <= s.max[1]):
            raise EngineError(
                f"input {h}x{w} (batch {n}) is outside the engine's profile {s.min[0]}x{s.min[1]}..{s.max[0]}x{s.max[1]} "
                f"(batch <= {s.batch}); build one that covers it: stream-denoise build-engine MODEL --max-shape {h}x{w}")
        if not x.is_contiguous():
            raise EngineError("TensorRT input must be a contiguous NCHW tensor")
        if not self.context.set_input_shape(self.in_name, tuple(x.shape)):
            raise EngineError(f"TensorRT rejected input shape {tuple(x.shape)}")
        out_shape = tuple(int(v) for v in self.context.get_tensor_shape(self.out_name))
        self._y = self.torch.empty(out_shape, dtype=self.out_dtype, device=x.device)
        ok = self.context.set_tensor_address(self.in_name, x.data_ptr())
        ok = self.context.set_tensor_address(self.out_name, self._y.data_ptr()) and ok
        if ok is False:
            raise EngineError("TensorRT rejected the I/O tensor addresses")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stream = self.torch.cuda.current_stream(x.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execution failed (see the TensorRT log)")
        assert self._y is not None
        return self._y

    def close(self) -> None:
        """The execution context goes before its engine."""
        self._y = None
        self.context = None


def _torch_dtype(trt: Any, torch: Any, dt: Any) -> Any:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dt not in table:
        raise EngineError(f"engine I/O type {dt} is not supported (float32, float16, bfloat16)")
    return table[dt]


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, cached: CachedEngine[Any], owner: Any = None, graphs: bool = True) -> None:
        """``cached``: from model_files.tensorrt_engine; ``owner``: what holds its TensorRT runtime."""
        from .tensorrt_runtime import Shapes, import_tensorrt
        from .cuda_windows import GpuExecutor, device_lock, require_cuda

        trt = import_tensorrt()
        torch = require_cuda()
        m = cached.manifest.get("model", {})
        try:
            layout = Layout.from_meta(m)
        except (KeyError, TypeError, ValueError):
            raise EngineError(f"{cached.path}: its manifest lacks the model window (frames/target/stride)") from None
        self.frames, self.target, self.stride, self.noise_planes = (layout.frames, layout.target, layout.stride,
                                                                    layout.noise_planes)
        self.map_curve = layout.curve
        self.path, self.manifest = cached.path, cached.manifest
        self.precision = cached.manifest.get("precision")
        self._owner, self._engine = owner, cached.engine  # the runtime must outlive the engine
        shapes = Shapes.from_profile(cached.manifest["profile"]) if "profile" in cached.manifest else None
        # the Denoiser splits batches larger than the profile's, and keeps the window on the GPU (window_runner)
        self.capabilities = Capabilities(max_batch=shapes.batch if shapes is not None else 1, device_windows=True)
        with device_lock():  # no context creation while another executor captures a graph
            # one shape at a time: a TensorRT graph depends on the context's shapes and addresses
            self._executor = GpuExecutor(TrtRunner(trt, torch, cached.engine, shapes), "cuda", graphs=graphs, max_shapes=1)
        log.info("tensorrt: %s (%s, window %d/%d)", self.path.name, self.precision, self.target, self.frames)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> TensorRTBackend:
        from ..model_files import tensorrt_engine
        from .cuda_windows import require_cuda
        from .tensorrt_runtime import import_tensorrt

        import_tensorrt()  # one line when TensorRT is missing, before anything about the GPU
        require_cuda()
        from .cuda_windows import device_lock

        with device_lock():  # building / deserialising allocates on the GPU: not while another executor captures
            cached, owner = tensorrt_engine(cfg.model, cfg.precision, cfg.tensorrt.engines_dir)
        return cls(cached, owner)

    @classmethod
    def from_engine(cls, path: str | Path, graphs: bool = True) -> TensorRTBackend:
        """An engine file built by ``build_engine`` (its ``.json`` manifest beside it)."""
        from .tensorrt_runtime import CachedEngine as Cached
        from .tensorrt_runtime import deserialize, import_tensorrt, trt_logger

        trt = import_tensorrt()
        path = Path(path)
        try:
            manifest = json.loads(path.with_suffix(".json").read_text())
            data = path.read_bytes()
        except (OSError, ValueError) as exc:
            raise EngineError(f"cannot read engine {path} or its manifest: {exc}") from None
        logger = trt_logger(trt)
        runtime = trt.Runtime(logger)
        return cls(Cached(path, manifest, deserialize(trt, runtime, logger, data), built=False), runtime, graphs)

    @property
    def executor(self) -> Any:
        return self._executor

    def window_runner(self) -> GpuWindowRunner:
        """Frames in, denoised frames out, with the window kept on the GPU (see cuda_windows.GpuWindowRunner)."""
        from .cuda_windows import GpuWindowRunner

        return GpuWindowRunner(self._executor, Layout.of(self))

    def infer(self, x: np.ndarray) -> np.ndarray:
        """x (N, 3K, H, W) float32 -> (N, 3, H, W) float32 (a reused buffer, valid until the next call)."""
        return self._executor.infer_host(x)

    def close(self) -> None:
        self._executor.close()
        self._engine = self._owner = None
