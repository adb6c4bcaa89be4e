"""TensorRT engines: precision-specific ONNX, build, cache with manifests.

An engine is tied to the exact ONNX bytes, its precision, its optimisation profile, the GPU (name and
compute capability), the TensorRT and CUDA versions and the OS. Those fields form the cache key; the
file name carries a hash of it (``<name>-<precision>-<hash12>.engine``) and a JSON manifest beside the
engine lists them (format: ``engines/README.md``). A lookup whose manifest differs in any field is a
miss that says which field; an engine whose bytes do not match its manifest, or that TensorRT cannot
deserialise, is a miss too, and is rebuilt once.

Precision comes from the ONNX (TensorRT 11 is strongly typed only; 10 is asked to be): fp16 is a
half-precision export, int8 an explicit Q/DQ graph from :func:`stream_denoise.export.quantize.quantize_int8`.
After a build the engine inspector's layer formats are checked against the request.

Nothing here imports tensorrt or torch at module import; :class:`EngineCache` and the key/precision
helpers are plain Python (tested on CPU with an injected loader).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generic, TypeVar

from .. import model_files
from ..model_files import PRECISIONS
from ..errors import BackendUnavailable, ConfigError, EngineError, ModelError
from ..files import atomic_write
from ..backends.tensorrt_runtime import (CachedEngine, Shapes, deserialize, import_tensorrt, major, parse_hw,
                                         trt_logger)
from ..planes import Layout

log = logging.getLogger(__name__)

FORMAT = "stream_denoise-engine/1"
INPUT = "frames"  # the ONNX input name (export.to_onnx.INPUT)
KEY_FIELDS = ("onnx_sha256", "precision", "profile", "gpu", "compute_capability", "tensorrt", "cuda", "platform")
DEFAULT_WORKSPACE_MB = 1024
T = TypeVar("T")


# ----------------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------------
# Where an engine runs (part of the key)
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """The GPU and software an engine is built for."""

    gpu: str
    compute_capability: str
    tensorrt: str
    cuda: str
    platform: str = field(default_factory=lambda: f"{platform.system().lower()}-{platform.machine()}")

    @property
    def slug(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")
        return f"{gpu}-cc{self.compute_capability}-trt{self.tensorrt}"


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
# Cache key, manifest, cache
# ----------------------------------------------------------------------------------------------------

def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def engine_key(onnx_sha256: str, precision: str, profile: Mapping[str, Any], target: Target) -> dict[str, Any]:
    """The fields an engine is only valid for (see KEY_FIELDS)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return {"onnx_sha256": onnx_sha256, "precision": precision,
            "profile": {"input": INPUT, **{k: [int(v) for v in profile[k]] for k in ("min", "opt", "max")}},
            "gpu": target.gpu, "compute_capability": target.compute_capability, "tensorrt": target.tensorrt,
            "cuda": target.cuda, "platform": target.platform}


def key_hash(key: Mapping[str, Any]) -> str:
    """12 hex digits of the sha256 of the key's canonical JSON (sorted keys, no spaces)."""
    blob = json.dumps({k: key[k] for k in KEY_FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def key_differences(manifest: Mapping[str, Any], key: Mapping[str, Any], fields: tuple[str, ...] = KEY_FIELDS) -> list[str]:
    """``field (engine X, here Y)`` for each key field where a manifest differs."""
    return [f"{f} (engine {_short(manifest.get(f))}, here {_short(key.get(f))})"
            for f in fields if manifest.get(f) != key.get(f)]


def _short(v: Any) -> str:
    if isinstance(v, dict):
        return "x".join(str(n) for n in v.get("min", [])[2:]) + ".." + "x".join(str(n) for n in v.get("max", [])[2:])
    s = str(v)
    return s[:12] if re.fullmatch(r"[0-9a-f]{64}", s) else s


class EngineCache(Generic[T]):
    """Engines and manifests in one folder. ``loader(bytes) -> T`` deserialises an engine and raises
    (or returns None) when it cannot; it is injected so the cache logic runs without TensorRT."""

    def __init__(self, root: str | Path, loader: Callable[[bytes], T | None]) -> None:
        self.root = Path(root)
        self.loader = loader

    def paths(self, name: str, key: Mapping[str, Any]) -> tuple[Path, Path]:
        stem = f"{name}-{key['precision']}-{key_hash(key)}"
        return self.root / f"{stem}.engine", self.root / f"{stem}.json"

    def manifests(self, name: str, precision: str) -> list[tuple[Path, dict[str, Any]]]:
        """Every readable manifest of ``name`` at ``precision`` (unreadable ones are skipped with a note)."""
        out = []
        for p in sorted(self.root.glob(f"{name}-{precision}-*.json")):
            try:
                m = json.loads(p.read_text())
                if isinstance(m, dict) and m.get("format") == FORMAT:
                    out.append((p, m))
            except (OSError, ValueError) as exc:
                log.info("engine cache: ignoring unreadable manifest %s (%s)", p.name, exc)
        return out

    def lookup(self, name: str, key: Mapping[str, Any]) -> CachedEngine[T] | None:
        """The cached engine for ``key``, or None after one log line saying why it missed."""
        engine_path, manifest_path = self.paths(name, key)
        what = f"{name} {key['precision']}"
        if not manifest_path.exists():
            others = self.manifests(name, str(key["precision"]))
            if not others:
                log.info("engine cache miss for %s: no engine in %s", what, self.root)
            else:  # say what differs from the closest one
                path, m = min(others, key=lambda pm: len(key_differences(pm[1], key)))
                log.info("engine cache miss for %s: %s differs: %s", what, path.name, "; ".join(key_differences(m, key)))
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("engine cache miss for %s: manifest %s unreadable (%s)", what, manifest_path.name, exc)
            return None
        diffs = key_differences(manifest, key)
        if diffs:  # a hash collision or a hand-edited manifest
            log.warning("engine cache miss for %s: %s differs: %s", what, manifest_path.name, "; ".join(diffs))
            return None
        try:
            data = engine_path.read_bytes()
        except OSError as exc:
            log.warning("engine cache miss for %s: %s unreadable (%s)", what, engine_path.name, exc)
            return None
        if hashlib.sha256(data).hexdigest() != manifest.get("engine_sha256"):
            log.warning("engine cache miss for %s: %s does not match its manifest (truncated or replaced)", what, engine_path.name)
            return None
        try:
            engine = self.loader(data)
            if engine is None:
                raise EngineError("the runtime returned no engine")
        except Exception as exc:
            log.warning("engine cache miss for %s: %s does not deserialise (%s); rebuilding",
                        what, engine_path.name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None
        log.info("engine cache hit: %s", engine_path)
        return CachedEngine(engine_path, manifest, engine, built=False)

    def store(self, name: str, key: Mapping[str, Any], data: bytes, extra: Mapping[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
        """Write the engine, then its manifest (each atomically): a manifest always has its engine."""
        engine_path, manifest_path = self.paths(name, key)
        manifest = {"format": FORMAT, "name": name, **{k: key[k] for k in KEY_FIELDS}, "engine": engine_path.name,
                    "engine_sha256": hashlib.sha256(data).hexdigest(), "engine_bytes": len(data),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(extra or {})}
        atomic_write(engine_path, data)
        atomic_write(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        log.info("engine written: %s (%.1f MB) + %s", engine_path, len(data) / 1e6, manifest_path.name)
        return engine_path, manifest

    def get_or_build(self, name: str, key: Mapping[str, Any],
                     build: Callable[[], tuple[bytes, Mapping[str, Any]]]) -> CachedEngine[T]:
        """A cache hit, or ``build()`` -> (engine bytes, extra manifest fields), stored and loaded. A
        freshly built engine that does not load is an EngineError (no second rebuild)."""
        hit = self.lookup(name, key)
        if hit is not None:
            return hit
        data, extra = build()
        path, manifest = self.store(name, key, data, extra)
        try:
            engine = self.loader(data)
        except Exception as exc:
            raise EngineError(f"the engine just built ({path.name}) does not load: {str(exc).splitlines()[0][:200]}") from None
        if engine is None:
            raise EngineError(f"the engine just built ({path.name}) does not load")
        return CachedEngine(path, manifest, engine, built=True)


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
# The precision-specific ONNX
# ----------------------------------------------------------------------------------------------------

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
                      "source": str(source), "source_sha256": sha256_file(source)},
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
