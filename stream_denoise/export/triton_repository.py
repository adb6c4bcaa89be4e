"""Export a model as an NVIDIA Triton Inference Server model repository (the GPU-datacentre alternative).

Triton's standard layout, one model per directory::

    OUT/<name>/config.pbtxt
    OUT/<name>/1/model.onnx     platform onnxruntime_onnx: Triton's ONNX Runtime backend, CPU instances
    OUT/<name>/1/model.plan     platform tensorrt_plan: an engine from ``stream-denoise build-engine``, GPU instances

``config.pbtxt`` (a ModelConfig protobuf in text form) declares the real I/O of our ONNX export: input
``frames`` (N, K * block, H, W) (``planes.Layout``) and output ``clean`` (N, 3, H, W), fp32 or fp16, batch dimension implicit
(``max_batch_size`` > 0, so the ONNX batch axis must be dynamic), H and W any size (-1); dynamic batching
(requests of several cameras are merged up to ``max_batch_size``); an instance group; and ``parameters``
with the window (frames, target, stride, window, precision), which ``backends.triton_client`` reads back from
the server. Files are written to a temporary name and renamed. Nothing here imports onnx at import time.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import model_files
from ..model_files import model_name
from ..errors import ConfigError, EngineError, ModelError
from ..planes import Layout

log = logging.getLogger(__name__)

Platform = Literal["onnxruntime", "tensorrt"]
PLATFORMS: dict[str, str] = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
MODEL_FILES: dict[str, str] = {"onnxruntime": "model.onnx", "tensorrt": "model.plan"}  # Triton's default names
KINDS: dict[str, str] = {"onnxruntime": "KIND_CPU", "tensorrt": "KIND_GPU"}
ONNX_TYPES: dict[int, str] = {1: "TYPE_FP32", 10: "TYPE_FP16"}  # onnx.TensorProto.FLOAT, FLOAT16
ENGINE_TYPES: dict[str, str] = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16"}  # manifest precision_check.io
WINDOW_KEYS = ("frames", "target", "stride", "noise_planes", "map_curve", "window", "precision")
QUEUE_DELAY_US = 1000  # dynamic batching: how long a request may wait for others (1 ms, vs 33 ms per frame)
VERSION = "1"


@dataclass(frozen=True)
class Tensor:
    """One model input or output as Triton declares it: dims without the batch axis, -1 = any size."""

    name: str
    data_type: str  # TYPE_FP32 or TYPE_FP16
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Signature:
    """The I/O and window metadata of a stream_denoise ONNX model."""

    input: Tensor
    output: Tensor
    window: dict[str, str]  # WINDOW_KEYS present in the ONNX metadata
    dynamic_batch: bool


def onnx_signature(path: str | Path) -> Signature:
    """Read the input/output tensors and window metadata of an ONNX file (needs the onnx package)."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError) as exc:
        raise ModelError(f"cannot read ONNX model {path}: {str(exc).splitlines()[0][:200]}") from None
    graph = proto.graph
    weights = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in weights]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ModelError(f"{path} has inputs {[v.name for v in inputs]} and outputs {[v.name for v in graph.output]}; "
                         "a stream_denoise model has one of each")
    meta = {p.key: p.value for p in proto.metadata_props if p.key in WINDOW_KEYS}
    try:
        layout = Layout.from_meta(meta)
    except (KeyError, ValueError):
        raise ModelError(f"{path} is an ONNX model but not a stream_denoise one (no window metadata)") from None
    (inp,), (out,) = inputs, graph.output
    in_dims, in_batch = _dims(path, inp)
    out_dims, _ = _dims(path, out)
    if in_dims[0] != layout.channels or out_dims[0] != 3:
        raise ModelError(f"{path}: input {inp.name} has {in_dims[0]} channels and output {out.name} {out_dims[0]}; "
                         f"expected {layout.channels} ({layout.block} x {layout.frames} frames) and 3")
    return Signature(Tensor(inp.name, _data_type(path, inp), in_dims), Tensor(out.name, _data_type(path, out), out_dims),
                     meta, in_batch)


def _dims(path: Path, value: Any) -> tuple[tuple[int, ...], bool]:
    """(dims after the batch axis with -1 for symbolic sizes, whether the batch axis is dynamic)."""
    shape = value.type.tensor_type.shape.dim
    if len(shape) != 4:
        raise ModelError(f"{path}: {value.name} has rank {len(shape)}, not 4 (N, C, H, W)")
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in shape)
    return dims[1:], dims[0] == -1


def _data_type(path: Path, value: Any) -> str:
    elem = value.type.tensor_type.elem_type
    if elem not in ONNX_TYPES:
        raise ModelError(f"{path}: {value.name} has ONNX element type {elem}; Triton export supports float32 and float16")
    return ONNX_TYPES[elem]


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two from 2 up to ``max_batch``, and ``max_batch`` itself."""
    sizes = {b for b in (2, 4, 8, 16, 32, 64, 128, 256) if b <= max_batch}
    return sorted(sizes | ({max_batch} if max_batch > 1 else set()))


def config_pbtxt(name: str, platform: Platform, sig: Signature, max_batch: int, instances: int,
                 queue_delay_us: int = QUEUE_DELAY_US) -> str:
    """The text of ``config.pbtxt`` (Triton's ModelConfig protobuf, text format)."""

    def tensor(t: Tensor) -> str:
        return (f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n'
                f'    dims: [ {", ".join(str(d) for d in t.dims)} ]\n  }}')

    preferred = preferred_batch_sizes(max_batch)
    lines = [f'name: "{name}"', f'platform: "{PLATFORMS[platform]}"', f"max_batch_size: {max_batch}",
             f"input [\n{tensor(sig.input)}\n]", f"output [\n{tensor(sig.output)}\n]",
             "dynamic_batching {" + (f"\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]" if preferred else "")
             + f"\n  max_queue_delay_microseconds: {queue_delay_us}\n}}",
             f"instance_group [\n  {{\n    count: {instances}\n    kind: {KINDS[platform]}\n  }}\n]"]
    lines += [f'parameters {{\n  key: "{k}"\n  value: {{ string_value: "{sig.window[k]}" }}\n}}'
              for k in WINDOW_KEYS if k in sig.window]
    return "\n".join(lines) + "\n"


def export_repository(model: str, out_dir: Path, *, platform: Platform = "onnxruntime",
                      precision: Literal["fp32", "fp16"] | None = None, max_batch: int = 16, instances: int = 1,
                      engine: Path | None = None, name: str | None = None,
                      queue_delay_us: int = QUEUE_DELAY_US) -> Path:
    """Write ``out_dir/<name>/config.pbtxt`` and ``out_dir/<name>/1/model.onnx`` (onnxruntime) or
    ``model.plan`` (tensorrt: a copy of ``engine``) and return the model directory.

    precision: onnxruntime: fp32 (default) or fp16 (exported from the .pt; needs torch); tensorrt: the
    engine's I/O precision, read from its manifest when there is one (default fp32 without one).
    """
    if platform not in PLATFORMS:
        raise ConfigError(f"unknown Triton platform {platform!r}; choose one of {', '.join(PLATFORMS)}")
    if precision not in (None, "fp32", "fp16"):
        raise ConfigError(f"precision {precision!r} for Triton must be fp32 or fp16")
    if not 1 <= max_batch <= 256:
        raise ConfigError(f"max batch {max_batch} must be between 1 and 256")
    if not 1 <= instances <= 64:
        raise ConfigError(f"instances {instances} must be between 1 and 64")
    name = name or model_name(model)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"Triton model name {name!r} must be letters, digits, '_', '.' or '-'")
    if platform == "tensorrt":
        data, sig = _tensorrt_model(model, precision, max_batch, engine)
    else:
        if engine is not None:
            raise ConfigError("--engine is for --platform tensorrt; the onnxruntime platform ships the ONNX model")
        onnx_path = model_files.onnx_file(model, precision or "fp32")
        data, sig = onnx_path.read_bytes(), onnx_signature(onnx_path)
    if not sig.dynamic_batch:
        raise ModelError(f"the ONNX model of {model!r} has a fixed batch size; Triton's batching needs a dynamic "
                         "batch axis: re-export it with `stream-denoise export MODEL.pt --out FILE.onnx`")
    from ..files import atomic_write

    model_dir = Path(out_dir) / name
    atomic_write(model_dir / VERSION / MODEL_FILES[platform], data)  # the model first: a config always has its model
    for other, filename in MODEL_FILES.items():
        if other != platform:
            (model_dir / VERSION / filename).unlink(missing_ok=True)
    text = config_pbtxt(name, platform, sig, max_batch, instances, queue_delay_us)
    atomic_write(model_dir / "config.pbtxt", text.encode())
    log.info("Triton model %s (%s, %s, max batch %d) written to %s", name, PLATFORMS[platform],
             sig.input.data_type, max_batch, model_dir)
    return model_dir


def _tensorrt_model(model: str, precision: str | None, max_batch: int,
                    engine: Path | None) -> tuple[bytes, Signature]:
    """(engine bytes, signature) for the tensorrt platform: I/O names from the model's ONNX, I/O types and
    batch limit from the engine's manifest (``<engine>.json``, see engines/README.md) when it has one."""
    import json

    if engine is None:
        raise EngineError(f"the tensorrt platform needs a built engine: run `stream-denoise build-engine {model} "
                          f"--batch {max_batch}` first (on a GPU, with the TensorRT version of the Triton image) "
                          "and pass it with --engine FILE")
    engine = Path(engine)
    if not engine.is_file():
        raise EngineError(f"engine file not found: {engine} (build one with `stream-denoise build-engine`)")
    manifest_path = engine.with_suffix(".json")
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    except (OSError, ValueError) as exc:
        raise EngineError(f"the engine manifest {manifest_path} is unreadable: {exc}") from None
    onnx_path = Path(manifest["onnx"]) if manifest and Path(manifest.get("onnx", "")).is_file() else model_files.onnx_file(model)
    sig = onnx_signature(onnx_path)
    data_type = {"fp16": "TYPE_FP16", "fp32": "TYPE_FP32", None: sig.input.data_type}[precision]
    engine_precision = "fp16" if data_type == "TYPE_FP16" else "fp32"
    if manifest is None:
        log.warning("%s has no manifest (%s): its batch limit and I/O types cannot be checked; assuming %s I/O "
                    "(--precision says otherwise)", engine.name, manifest_path.name, engine_precision)
    else:
        io = manifest.get("precision_check", {}).get("io", {})
        engine_type = ENGINE_TYPES.get(io.get(sig.input.name, ""),
                                       "TYPE_FP16" if manifest.get("onnx_precision") == "fp16" else "TYPE_FP32")
        if precision is not None and engine_type != data_type:
            raise ConfigError(f"{engine.name} takes {engine_type[5:].lower()} input, not {precision}: "
                              "leave out --precision, or build the engine you want")
        data_type, engine_precision = engine_type, str(manifest.get("precision", engine_precision))
        if manifest.get("name") not in (None, model_name(model)):
            log.warning("%s was built from model %r, exported here as %r", engine.name, manifest["name"], model)
        frames = manifest.get("model", {}).get("frames")
        if frames is not None and int(frames) != int(sig.window["frames"]):
            raise ModelError(f"{engine.name} was built for a {frames}-frame model, but {model!r} has "
                             f"{sig.window['frames']} frames: pass the engine of this model")
        batch = int(manifest.get("profile", {}).get("max", [max_batch])[0])
        if batch < max_batch:
            raise EngineError(f"{engine.name} allows batches up to {batch}, less than --max-batch {max_batch}: "
                              f"rebuild it with `stream-denoise build-engine {model} --batch {max_batch}` "
                              f"or pass --max-batch {batch}")
    sig = Signature(Tensor(sig.input.name, data_type, sig.input.dims), Tensor(sig.output.name, data_type, sig.output.dims),
                    {**sig.window, "precision": engine_precision}, sig.dynamic_batch)
    return engine.read_bytes(), sig
