"""The TensorRT engine cache: keys, manifests and lookups, in plain Python (no TensorRT: tested on the
CPU with an injected loader).

An engine is tied to the exact ONNX bytes, its precision, its optimisation profile, the GPU (name and
compute capability), the TensorRT and CUDA versions and the OS. Those fields form the cache key; the
file name carries a hash of it (``<name>-<precision>-<hash12>.engine``) and a JSON manifest beside the
engine lists them (format: ``engines/README.md``). A lookup whose manifest differs in any field is a
miss that says which field; an engine whose bytes do not match its manifest, or that TensorRT cannot
deserialise, is a miss too, and is rebuilt once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..backends.tensorrt_runtime import CachedEngine
from ..errors import ConfigError, EngineError
from ..files import atomic_write
from ..model_files import PRECISIONS

log = logging.getLogger(__name__)

FORMAT = "stream_denoise-engine/1"
INPUT = "frames"  # the ONNX input name (export.to_onnx.INPUT)
KEY_FIELDS = ("onnx_sha256", "precision", "profile", "gpu", "compute_capability", "tensorrt", "cuda", "platform")
T = TypeVar("T")


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
