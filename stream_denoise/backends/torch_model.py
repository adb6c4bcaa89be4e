"""The PyTorch model itself: the reference backend on the CPU (``torch``) and the GPU (``cuda``).

On the GPU it runs through the shared GPU path (``backends.cuda_windows``): fp16 when asked, channels_last
memory, a dedicated stream, static buffers and CUDA-graph replay after one warm run.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import numpy as np

from .. import model_files
from ..errors import BackendUnavailable
from ..planes import Layout
from . import Capabilities

if TYPE_CHECKING:
    from ..config import ModelConfig
    import torch

    from .cuda_windows import GpuExecutor, GpuWindowRunner

log = logging.getLogger(__name__)

GPU_FORMS = ("plain", "padded", "shuffle", "fused")  # see model.gpu_form


class TorchRunner:
    """cuda_windows.Runner for an nn.Module: forward on the current stream."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, memory_format: torch.memory_format) -> None:
        self.model, self.dtype, self.memory_format = model, dtype, memory_format
        from ..model.gpu_form import GpuForm

        self.in_channels: int | None = model.in_channels if isinstance(model, GpuForm) else None  # GpuForm pads its input
        self.max_batch: int | None = None

    def prepare(self, x: torch.Tensor) -> None:
        pass

    def close(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class TorchBackend:
    def __init__(self, path: str, device: str = "cpu", threads: int | None = None, precision: str = "fp32",
                 graphs: bool = True, form: str = "fused") -> None:
        """``form`` (GPU only): ``plain`` runs the network as trained; ``padded``, ``shuffle`` and
        ``fused`` (default) run model.gpu_form.GpuForm, the same function with channels padded for
        tensor cores (``shuffle``: transposed convolutions as 1x1 conv + pixel shuffle; ``fused``:
        conv + bias + ReLU as one cuDNN call). ``base`` at 1080p fp16 on an H100: 217 / 256 / 183 /
        407 frames/s (BENCHMARKS.md, GPU runtime)."""
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailable("the torch backend needs PyTorch: pip install 'stream_denoise[torch]'") from exc
        from ..model import load_model

        from .cuda_windows import device_lock, require_cuda

        if device == "cuda":
            require_cuda()
        if threads and device == "cpu":
            torch.set_num_threads(threads)
        self.torch, self.device = torch, torch.device(device)
        if form not in GPU_FORMS:
            raise ValueError(f"unknown GPU form {form!r}; choose one of {', '.join(GPU_FORMS)}")
        with device_lock() if device == "cuda" else contextlib.nullcontext():  # no allocation while an executor captures
            net = load_model(path).to(self.device)
            self.frames, self.target, self.stride = net.frames, net.target, net.stride
            self.noise_planes, self.map_curve = net.arch.noise_planes, net.map_curve
            self.model: torch.nn.Module = net
            self.form = form if device == "cuda" else "plain"
            if self.form != "plain":
                from ..model.gpu_form import GpuForm

                self.model = GpuForm(net, shuffle=self.form == "shuffle", fuse=self.form == "fused").to(self.device)
            self.dtype = torch.float16 if precision == "fp16" and device == "cuda" else torch.float32
            if precision == "int8":
                log.warning("%s backend: int8 is for TensorRT engines; running %s", "cuda" if device == "cuda" else "torch", self.dtype)
            self.model = self.model.to(self.dtype)
            self.memory_format = torch.contiguous_format
            if device == "cuda":
                torch.backends.cudnn.benchmark = True  # fixed shapes per stream: pick the fastest kernels once
                self.memory_format = torch.channels_last
                self.model = self.model.to(memory_format=self.memory_format)  # type: ignore[call-overload]
        self.name = "torch" if device == "cpu" else "cuda"
        # on a GPU the Denoiser keeps the window there (window_runner) instead of calling infer
        self.capabilities = Capabilities(device_windows=self.device.type == "cuda")
        self.graphs = graphs
        self._executor: GpuExecutor | None = None
        log.info("%s: %s on %s (%s%s)", self.name, path, device, self.dtype, "" if self.form == "plain" else f", {self.form} form")

    @classmethod
    def from_config(cls, cfg: ModelConfig, device: str) -> TorchBackend:
        if device == "cuda":  # say "no GPU" before anything about model files
            from .cuda_windows import require_cuda

            require_cuda()
        return cls(str(model_files.resolve(cfg.model, ".pt")), device, cfg.threads, cfg.precision)

    @property
    def executor(self) -> GpuExecutor:
        """The shared GPU path (static buffers, stream, CUDA graphs); on the CPU the same code, eager."""
        if self._executor is None:
            from .cuda_windows import GpuExecutor

            runner = TorchRunner(self.model, self.dtype, self.memory_format)
            self._executor = GpuExecutor(runner, self.device, graphs=self.graphs)
        return self._executor

    def window_runner(self) -> GpuWindowRunner:
        """Frames in, denoised frames out, with the window kept on the device (see cuda_windows.GpuWindowRunner)."""
        from .cuda_windows import GpuWindowRunner

        return GpuWindowRunner(self.executor, Layout.of(self))

    def infer(self, x: np.ndarray) -> np.ndarray:
        """x (N, 3K, H, W) float32 -> (N, 3, H, W) float32 (on cuda: a reused buffer, valid until the next call)."""
        if self.device.type == "cuda":
            return self.executor.infer_host(x)
        torch = self.torch
        with torch.inference_mode():
            x = np.ascontiguousarray(x, dtype=np.float32)
            if not x.flags.writeable:  # a read-only view (e.g. of the window slab): torch wants its own memory
                x = x.copy()
            t = torch.from_numpy(x).to(self.device, self.dtype)
            return self.model(t).float().cpu().numpy()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None
        self.model = None  # type: ignore[assignment]
