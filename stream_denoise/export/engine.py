"""TensorRT engines: build one (``build_engine``), or find the cached one and build it on a miss
(``find_or_build``). The cache is ``engine_cache``; the ONNX in the precision asked, ``engine_onnx``.

Precision comes from the ONNX (TensorRT 11 is strongly typed only; 10 is asked to be): fp16 is a
half-precision export, int8 an explicit Q/DQ graph from :func:`stream_denoise.export.quantize.quantize_int8`.
After a build the engine inspector's layer formats are checked against the request.

Nothing here imports tensorrt or torch at module import; the precision checks are plain Python.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import model_files
from ..backends.tensorrt_runtime import CachedEngine, Shapes, deserialize, import_tensorrt, major, trt_logger
from ..errors import BackendUnavailable, EngineError, ModelError
from ..files import atomic_write
from ..planes import Layout
from .engine_cache import INPUT, KEY_FIELDS, EngineCache, Target, engine_key, key_differences, sha256_file
from .engine_onnx import precision_onnx

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_MB = 1024


# ----------------------------------------------------------------------------------------------------
# Where an engine runs (part of the key)
# ----------------------------------------------------------------------------------------------------

def detect_target(trt: Any) -> Target:
    """The visible GPU (device 0): through torch.cuda, else cuda-python, else BackendUnavailable."""
    reason = "no NVIDIA GPU is visible" if not model_files.gpu_visible() else None
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return Target(torch.cuda.get_device_name(0), f"{major}.{minor}", str(trt.__version__), str(torch.version.cuda))
    if torch is not None and reason is None and torch.version.cuda is None:
        reason = f"PyTorch {torch.__version__} here is a CPU build; install its CUDA build to use the GPU"
    target = _target_from_cuda_python(trt)
    if target is not None:
        return target
    raise BackendUnavailable(reason or "the NVIDIA GPU cannot be queried: install PyTorch (CUDA build) or cuda-python")


def _target_from_cuda_python(trt: Any) -> Target | None:
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # type: ignore[no-redef]
    except ImportError:
        return None
    ok = cudart.cudaError_t.cudaSuccess
    err, count = cudart.cudaGetDeviceCount()
    if err != ok or count < 1:
        return None
    err, prop = cudart.cudaGetDeviceProperties(0)
    err2, version = cudart.cudaRuntimeGetVersion()
    if err != ok or err2 != ok:
        return None
    name = prop.name.decode(errors="replace").rstrip("\0") if isinstance(prop.name, bytes) else str(prop.name)
    return Target(name, f"{prop.major}.{prop.minor}", str(trt.__version__), f"{version // 1000}.{version % 1000 // 10}")


# ----------------------------------------------------------------------------------------------------
# Precision check of a built engine
# ----------------------------------------------------------------------------------------------------

_BOOKKEEPING = {"reformat", "noop", "shuffle", "constant", "identity", "slice", "concatenation", "cast"}


def format_precision(fmt: str) -> str:
    """A TensorRT 'Format/Datatype' string ('Row major linear FP16 format', 'Half', 'Int8'...) -> fp16/..."""
    s = fmt.lower()
    for word, name in (("int8", "int8"), ("fp8", "fp8"), ("bf16", "bf16"), ("fp16", "fp16"), ("half", "fp16"),
                       ("fp32", "fp32"), ("float", "fp32")):
        if word in s:
            return name
    return "unknown"


def layer_precisions(engine_info_json: str) -> list[tuple[str, str, str]]:
    """(layer name, layer type, precision of its first input) of each computing layer in the engine
    inspector's JSON (built with ProfilingVerbosity.DETAILED); reformat/copy layers are left out."""
    try:
        info = json.loads(engine_info_json)
    except ValueError:
        return []
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    out = []
    for layer in layers:
        if not isinstance(layer, dict):  # LAYER_NAMES_ONLY gives bare names
            continue
        kind = str(layer.get("LayerType", ""))
        if kind.lower() in _BOOKKEEPING:
            continue
        tensors = layer.get("Inputs") or layer.get("Outputs") or []
        fmt = tensors[0].get("Format/Datatype", "") if tensors and isinstance(tensors[0], dict) else ""
        out.append((str(layer.get("Name", "?")), kind, format_precision(str(fmt))))
    return out


def check_precision(precision: str, layers: list[tuple[str, str, str]], io_dtypes: Mapping[str, str]) -> dict[str, Any]:
    """Compare what an engine runs in with what was asked. Returns a report for the manifest; raises
    EngineError when nothing runs in the requested precision, warns when some layers run in fp32."""
    counts = Counter(p for _, _, p in layers if p != "unknown")
    report: dict[str, Any] = {"layers": len(layers), "by_precision": dict(sorted(counts.items())), "io": dict(io_dtypes)}
    if precision == "fp32":
        return report
    want = precision
    if not counts:  # no layer formats (old TensorRT, or shapes unknown to the inspector): the I/O types say little
        io = set(io_dtypes.values())
        if precision == "fp16" and io and io <= {"FLOAT"}:
            raise EngineError("asked for an fp16 engine but its inputs and outputs are fp32: the ONNX is not an fp16 export")
        log.warning("engine precision: layer formats unavailable; I/O types %s", dict(io_dtypes))
        report["verified"] = False
        return report
    if counts.get(want, 0) == 0:
        raise EngineError(f"asked for an {want} engine but no layer runs in {want} ({dict(counts)}): "
                          f"check the ONNX ({'half-precision export' if want == 'fp16' else 'Q/DQ nodes'})")
    fp32 = [name for name, _, p in layers if p == "fp32"]
    if fp32:  # int8 graphs keep float layers where there are no Q/DQ pairs: expected, so info only
        (log.warning if want == "fp16" else log.info)(
            "engine precision: %d of %d layers run in fp32 although %s was asked (e.g. %s)",
            len(fp32), len(layers), want, ", ".join(n[:60] for n in fp32[:3]))
        report["fp32_layers"] = fp32[:20]
    else:
        log.info("engine precision: %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    report["verified"] = True
    return report


# ----------------------------------------------------------------------------------------------------
# TensorRT: logger, progress, build, deserialise
# ----------------------------------------------------------------------------------------------------

def _progress_monitor(trt: Any) -> Any | None:
    """A trt.IProgressMonitor logging each top-level build phase (nested ones at debug), or None."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Progress(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()  # TensorRT may call from several threads
            self._start: dict[str, float] = {}
            self._top: set[str] = set()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._start[phase_name] = time.monotonic()
                if parent_phase is None:
                    self._top.add(phase_name)
            (log.info if parent_phase is None else log.debug)("engine build: %s (%d steps)...", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                dt = time.monotonic() - self._start.pop(phase_name, time.monotonic())
                top = phase_name in self._top
                self._top.discard(phase_name)
            (log.info if top else log.debug)("engine build: %s done in %.1f s", phase_name, dt)

    return Progress()


def _network_flags(trt: Any) -> int:
    """Strongly typed: TensorRT 10 needs the flag; 11 is always strongly typed (the flag is deprecated)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None and major(trt.__version__) == 10 else 0


def _timing_cache_path(out_dir: Path, target: Target) -> Path:
    return out_dir / f"timing-{target.slug}.cache"


def inspect_engine(trt: Any, engine: Any, opt_shape: list[int]) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """(computing layers with precisions, I/O tensor dtypes) of an engine, shapes fixed at ``opt_shape``."""
    io = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dt = engine.get_tensor_dtype(name)
        io[name] = getattr(dt, "name", str(dt).split(".")[-1])
    layers: list[tuple[str, str, str]] = []
    try:
        context = engine.create_execution_context()
        context.set_input_shape(INPUT, tuple(opt_shape))
        inspector = engine.create_engine_inspector()
        for attr in ("execution_context", "context"):  # 11.x / 10.x name of the same property
            try:
                setattr(inspector, attr, context)
                break
            except (AttributeError, TypeError):
                continue
        layers = layer_precisions(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception as exc:  # the inspector is diagnostics: never fail a build on it
        log.warning("engine inspector unavailable (%s)", exc)
    return layers, io


def _build_plan(trt: Any, logger: Any, onnx_path: Path, precision: str, profile: Mapping[str, list[int]],
                out_dir: Path, target: Target, workspace_mb: int) -> tuple[bytes, dict[str, Any]]:
    """Parse, configure, build; returns (plan bytes, manifest extras incl. the precision report)."""
    t0 = time.monotonic()
    logger.errors.clear()
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # pybind raises when the factory returns null (no usable GPU/driver)
        builder, why = None, str(exc).splitlines()[0][:200]
    else:
        why = "no usable GPU or driver"
    if builder is None:
        raise BackendUnavailable(f"TensorRT cannot create a builder: {logger.errors[-1] if logger.errors else why}")
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    log.info("engine build: parsing %s", onnx_path)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)).strip() for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path.name}: {errors[:400] or 'unknown parser error'}")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if INPUT not in names:
        raise EngineError(f"{onnx_path.name} has inputs {names}, not {INPUT!r}: not a stream_denoise export")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer formats for the precision check
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT, tuple(profile["min"]), tuple(profile["opt"]), tuple(profile["max"]))
    config.add_optimization_profile(opt_profile)

    cache_path = _timing_cache_path(out_dir, target)
    blob = cache_path.read_bytes() if cache_path.exists() else b""
    timing = None
    try:
        timing = config.create_timing_cache(blob)
    except Exception as exc:
        log.info("timing cache %s unusable (%s); starting a new one", cache_path.name, exc)
    if timing is None and blob:
        timing = config.create_timing_cache(b"")
    if timing is not None:
        config.set_timing_cache(timing, False)
    monitor = _progress_monitor(trt)
    if monitor is not None:
        config.progress_monitor = monitor  # kept alive by ``monitor`` until the build returns
    log.info("engine build: %s %s, profile %s..%s (opt %s), %d MB workspace, TensorRT %s on %s (this takes a while)",
             onnx_path.name, precision, profile["min"], profile["max"], profile["opt"], workspace_mb, target.tensorrt, target.gpu)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        why = logger.errors[-1] if logger.errors else "see the TensorRT log above"
        raise EngineError(f"TensorRT failed to build the engine: {why[:300]}")
    data = bytes(plan)
    if timing is not None:
        try:
            atomic_write(cache_path, bytes(timing.serialize()))
        except Exception as exc:
            log.warning("could not save the timing cache %s (%s)", cache_path, exc)
    build_s = time.monotonic() - t0
    log.info("engine build: done in %.0f s (%.1f MB)", build_s, len(data) / 1e6)

    runtime = trt.Runtime(logger)
    engine = deserialize(trt, runtime, logger, data)
    layers, io = inspect_engine(trt, engine, profile["opt"])
    report = check_precision(precision, layers, io)
    return data, {"precision_check": report, "build_seconds": round(build_s, 1), "workspace_mb": int(workspace_mb)}


def _model_extras(onnx_path: Path, source: Path, fallback: Callable[[], Path]) -> dict[str, Any]:
    """Window metadata for the manifest, from the ONNX (or, when a quantiser dropped it, the fp32 one)."""
    from ..onnx_session import onnx_meta

    meta = onnx_meta(onnx_path)
    if "frames" not in meta:
        meta = {**onnx_meta(fallback()), **{k: v for k, v in meta.items() if k == "precision"}}
    try:
        layout = Layout.from_meta(meta)
    except (KeyError, ValueError):
        raise ModelError(f"{onnx_path} is not a stream_denoise ONNX (no window metadata)") from None
    return {"model": {"frames": layout.frames, "target": layout.target, "stride": layout.stride,
                      "noise_planes": layout.noise_planes, "channels": layout.channels, "window": layout.window,
                      "source": str(source), "source_sha256": sha256_file(source)}
            | ({"map_curve": layout.curve.to_meta()} if layout.curve is not None else {}),
            "onnx": str(onnx_path), "onnx_precision": meta.get("precision", "fp32")}


def _channels(model: Mapping[str, Any]) -> int:
    """The input channels of a manifest's model (manifests from before noise maps: 3 per frame)."""
    return int(model.get("channels", 3 * int(model["frames"])))


@dataclass
class _Job:
    trt: Any
    target: Target
    logger: Any
    runtime: Any
    name: str
    source: Path
    onnx: Path
    extras: dict[str, Any]
    cache: EngineCache[Any]

    def key(self, precision: str, shapes: Shapes) -> dict[str, Any]:
        return engine_key(sha256_file(self.onnx), precision, shapes.profile(_channels(self.extras["model"])), self.target)

    def build(self, precision: str, shapes: Shapes, workspace_mb: int) -> Callable[[], tuple[bytes, dict[str, Any]]]:
        def run() -> tuple[bytes, dict[str, Any]]:
            profile = shapes.profile(_channels(self.extras["model"]))
            data, extra = _build_plan(self.trt, self.logger, self.onnx, precision, profile,
                                      self.cache.root, self.target, workspace_mb)
            return data, {**self.extras, **extra}
        return run


def _job(model: str | Path, precision: str, out_dir: str | Path, calibration: str | Path | None) -> _Job:
    trt = import_tensorrt()  # TensorRT first, then the GPU: the one-line reason names the first gap
    target = detect_target(trt)
    name, source = model_files.source(model)
    onnx_path = precision_onnx(model, precision, calibration)
    logger = trt_logger(trt)
    runtime = trt.Runtime(logger)
    cache: EngineCache[Any] = EngineCache(out_dir, lambda data: deserialize(trt, runtime, logger, data))
    extras = _model_extras(onnx_path, source, lambda: precision_onnx(model, "fp32"))
    return _Job(trt, target, logger, runtime, name, source, onnx_path, extras, cache)


def build_engine(model: str | Path, precision: str = "fp16", shapes: Shapes | None = None,
                 out_dir: str | Path = Path("engines"), calibration: str | Path | None = None,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB) -> Path:
    """Build (always; replacing a cached one) the engine of ``model`` and return its path. Needs
    TensorRT >= 10 and an NVIDIA GPU; otherwise BackendUnavailable with one line."""
    shapes = shapes or Shapes()
    job = _job(model, precision, out_dir, calibration)
    key = job.key(precision, shapes)
    data, extra = job.build(precision, shapes, workspace_mb)()
    path, _ = job.cache.store(job.name, key, data, extra)
    return path


def find_or_build(model: str | Path, precision: str = "fp16", shapes: Shapes | None = None,
                  out_dir: str | Path = Path("engines"), calibration: str | Path | None = None,
                  workspace_mb: int = DEFAULT_WORKSPACE_MB) -> tuple[CachedEngine[Any], Any]:
    """The cached engine for the key, else a new build: ((path, manifest, ICudaEngine, built), owner).

    ``shapes=None`` takes any cached engine for this ONNX/precision/GPU/versions (the widest profile),
    else builds the default profile (64x64..1080x1920). ``owner`` holds the TensorRT runtime and
    logger the engine came from: keep it alive as long as the engine.
    """
    job = _job(model, precision, out_dir, calibration)
    if shapes is None:
        base = engine_key(sha256_file(job.onnx), precision, Shapes().profile(_channels(job.extras["model"])), job.target)
        fields = tuple(f for f in KEY_FIELDS if f != "profile")
        fits = [m for _, m in job.cache.manifests(job.name, precision) if not key_differences(m, base, fields)]
        if fits:
            widest = max(fits, key=lambda m: m["profile"]["max"][2] * m["profile"]["max"][3])
            shapes = Shapes.from_profile(widest["profile"])
        else:
            shapes = Shapes()
            log.info("no %s %s engine for %s in %s: building one with the default profile %s..%s",
                     job.name, precision, job.target.gpu, job.cache.root, shapes.min, shapes.max)
    key = job.key(precision, shapes)
    return job.cache.get_or_build(job.name, key, job.build(precision, shapes, workspace_mb)), job
