"""TensorRT engine building, the parts that run without TensorRT or a GPU: the precision-specific
ONNX (fp16 export, INT8 Q/DQ) run in ONNX Runtime against the fp32 model, shapes, the cache key,
manifests and the cache itself (with an injected loader, not a mock of TensorRT), the precision
check on engine-inspector output, and the one-line errors where TensorRT or the GPU is missing."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from stream_denoise.backends import create_backend
from stream_denoise.backends.tensorrt_runtime import Shapes, parse_hw
from stream_denoise.export.engine import check_precision, format_precision, layer_precisions
from stream_denoise.export.engine_cache import KEY_FIELDS, EngineCache, Target, engine_key, key_hash
from stream_denoise.files import atomic_write
from stream_denoise.config import ModelConfig
from stream_denoise.errors import BackendUnavailable, ConfigError, EngineError, ModelError

TARGET = Target("NVIDIA H100 80GB HBM3", "9.0", "10.8.0.43", "12.6", "linux-x86_64")
ONNX_SHA = hashlib.sha256(b"onnx").hexdigest()


def _key(**change: object) -> dict:
    key = engine_key(ONNX_SHA, "fp16", Shapes().profile(15), TARGET)
    key.update(change)
    return key


def _trt_missing() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return True
    return False


# --------------------------------------------------------------------------------------------------
# Shapes and keys
# --------------------------------------------------------------------------------------------------


def test_shapes_parse_round_and_validate():
    assert parse_hw("720x1280") == (720, 1280) and parse_hw(" 16X32 ") == (16, 32)
    for bad in ("1280", "0x10", "axb", "-4x8"):
        with pytest.raises(ConfigError, match="HEIGHTxWIDTH"):
            parse_hw(bad)
    fixed = Shapes.parse(shape="1080x1920")
    assert fixed.min == fixed.opt == fixed.max == (1080, 1920)
    assert Shapes.parse(shape="718x1278").opt == (720, 1280)  # rounded up to the stride
    wide = Shapes.parse(max_shape="2160x3840", batch=4)
    assert (wide.min, wide.opt, wide.max, wide.batch) == ((64, 64), (720, 1280), (2160, 3840), 4)
    small = Shapes.parse(max_shape="360x640")  # the default opt is clamped into the range
    assert small.opt == (360, 640)
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        Shapes.parse(min_shape="720x1280", max_shape="360x640")
    with pytest.raises(ConfigError, match="batch"):
        Shapes(batch=0)
    assert Shapes().profile(15) == {"min": [1, 15, 64, 64], "opt": [1, 15, 720, 1280], "max": [1, 15, 1080, 1920]}
    assert Shapes.from_profile(wide.profile(15)) == wide


def test_key_hash_is_canonical_and_sensitive_to_every_field():
    key = _key()
    assert set(key) == set(KEY_FIELDS)
    assert key_hash(key) == key_hash(dict(reversed(list(key.items()))))  # order does not matter
    assert key_hash({**key, "unrelated": 1}) == key_hash(key)
    hashes = {key_hash(key)}
    for field in KEY_FIELDS:
        other = _key(**{field: {"input": "frames", "min": [1, 15, 64, 64], "opt": [1, 15, 64, 64], "max": [1, 15, 64, 64]}
                        if field == "profile" else "x"})
        hashes.add(key_hash(other))
    assert len(hashes) == len(KEY_FIELDS) + 1
    with pytest.raises(ConfigError, match="precision"):
        engine_key(ONNX_SHA, "fp8", Shapes().profile(15), TARGET)


# --------------------------------------------------------------------------------------------------
# The cache, with an injected loader
# --------------------------------------------------------------------------------------------------


class Loader:
    """Stands in for Runtime.deserialize_cuda_engine: 'loads' bytes starting with b'PLAN', records calls."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def __call__(self, data: bytes) -> str:
        self.calls.append(data)
        if not data.startswith(b"PLAN"):
            raise EngineError("The engine plan file is not compatible with this version of TensorRT")
        return f"engine<{data.decode()}>"


class Builder:
    def __init__(self, data: bytes = b"PLAN-new") -> None:
        self.data, self.calls = data, 0

    def __call__(self) -> tuple[bytes, dict]:
        self.calls += 1
        return self.data, {"model": {"frames": 5, "target": 2, "stride": 4}}


def test_store_writes_engine_and_manifest_atomically_and_hits(tmp_path):
    cache = EngineCache(tmp_path, Loader())
    path, manifest = cache.store("lite", _key(), b"PLAN-1", {"build_seconds": 1.5})
    assert path.name == f"lite-fp16-{key_hash(_key())}.engine" and path.read_bytes() == b"PLAN-1"
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk == manifest
    assert {k: on_disk[k] for k in KEY_FIELDS} == _key()
    assert on_disk["engine_sha256"] == hashlib.sha256(b"PLAN-1").hexdigest() and on_disk["engine_bytes"] == 6
    assert on_disk["build_seconds"] == 1.5 and on_disk["created"].endswith("+00:00")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.with_suffix(".json").name])  # no temp files
    hit = cache.lookup("lite", _key())
    assert hit is not None and hit.engine == "engine<PLAN-1>" and hit.path == path and not hit.built


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "x.engine"
    atomic_write(target, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.engine"]  # the temporary file is gone


@pytest.mark.parametrize("field,value", [
    ("onnx_sha256", hashlib.sha256(b"other onnx").hexdigest()),
    ("precision", "int8"),
    ("profile", {"input": "frames", "min": [1, 15, 64, 64], "opt": [1, 15, 360, 640], "max": [1, 15, 720, 1280]}),
    ("gpu", "NVIDIA L4"),
    ("compute_capability", "8.9"),
    ("tensorrt", "11.0.0"),
    ("cuda", "13.0"),
    ("platform", "windows-AMD64"),
])
def test_a_different_field_is_a_miss_that_names_it(tmp_path, caplog, field, value):
    loader = Loader()
    cache = EngineCache(tmp_path, loader)
    stored = _key(**({"precision": "int8"} if field == "precision" else {}))  # precision differs the other way
    cache.store("lite", stored, b"PLAN-1")
    wanted = _key() if field == "precision" else _key(**{field: value})
    if field == "precision":  # engines of another precision are not candidates at all
        with caplog.at_level(logging.INFO, logger="stream_denoise.export.engine_cache"):
            assert cache.lookup("lite", wanted) is None
        assert "no engine" in caplog.text
        return
    with caplog.at_level(logging.INFO, logger="stream_denoise.export.engine_cache"):
        assert cache.lookup("lite", wanted) is None
    line = next(r.getMessage() for r in caplog.records if "miss" in r.getMessage())
    assert f"differs: {field} (engine" in line
    assert line.count("(engine") == 1  # only the field that differs is named
    assert loader.calls == []  # never deserialised


def test_corrupt_engine_is_a_miss_and_rebuilt_once(tmp_path, caplog):
    loader = Loader()
    cache = EngineCache(tmp_path, loader)
    path, _ = cache.store("lite", _key(), b"PLAN-1")
    path.write_bytes(b"PLAN-1-truncat")  # bytes no longer match the manifest
    build = Builder()
    with caplog.at_level(logging.INFO, logger="stream_denoise.export.engine_cache"):
        got = cache.get_or_build("lite", _key(), build)
    assert "does not match its manifest" in caplog.text
    assert build.calls == 1 and got.built and got.engine == "engine<PLAN-new>"
    assert cache.get_or_build("lite", _key(), build).built is False and build.calls == 1  # now a hit


def test_engine_that_does_not_deserialise_is_a_miss_and_rebuilt_once(tmp_path, caplog):
    loader = Loader()
    cache = EngineCache(tmp_path, loader)
    cache.store("lite", _key(), b"STALE plan of another TensorRT")  # manifest matches, runtime refuses
    build = Builder()
    with caplog.at_level(logging.INFO, logger="stream_denoise.export.engine_cache"):
        got = cache.get_or_build("lite", _key(), build)
    assert "does not deserialise (The engine plan file is not compatible" in caplog.text
    assert build.calls == 1 and got.built and got.path.read_bytes() == b"PLAN-new"
    manifest = json.loads(got.path.with_suffix(".json").read_text())
    assert manifest["engine_sha256"] == hashlib.sha256(b"PLAN-new").hexdigest() and manifest["model"]["frames"] == 5


def test_a_rebuilt_engine_that_does_not_load_is_an_error_not_a_loop(tmp_path):
    cache = EngineCache(tmp_path, Loader())
    build = Builder(b"BROKEN")
    with pytest.raises(EngineError, match="just built .* does not load"):
        cache.get_or_build("lite", _key(), build)
    assert build.calls == 1


def test_unreadable_or_foreign_manifests_are_misses(tmp_path, caplog):
    cache = EngineCache(tmp_path, Loader())
    path, _ = cache.store("lite", _key(), b"PLAN-1")
    path.with_suffix(".json").write_text("{not json")
    with caplog.at_level(logging.INFO, logger="stream_denoise.export.engine_cache"):
        assert cache.lookup("lite", _key()) is None
    assert "unreadable" in caplog.text
    (tmp_path / "lite-fp16-000000000000.json").write_text(json.dumps({"format": "something else"}))
    assert cache.manifests("lite", "fp16") == []


# --------------------------------------------------------------------------------------------------
# Precision check of a built engine (engine inspector JSON)
# --------------------------------------------------------------------------------------------------


def _info(*formats: str, extra: tuple = ()) -> str:
    layers = [{"Name": f"conv{i}", "LayerType": "CaskConvolution",
               "Inputs": [{"Name": "t", "Format/Datatype": f}], "Outputs": [{"Name": "u", "Format/Datatype": f}]}
              for i, f in enumerate(formats)]
    layers += [{"Name": "reformat", "LayerType": "Reformat", "Inputs": [{"Format/Datatype": "Row major linear FP32"}]}, *extra]
    return json.dumps({"Layers": layers, "Bindings": ["frames", "clean"]})


def test_format_strings_of_several_tensorrt_versions():
    assert format_precision("Row major linear FP16 format") == "fp16"
    assert format_precision("Half") == "fp16"
    assert format_precision("Thirty-two wide channel vectorized row major Int8 format.") == "int8"
    assert format_precision("Float") == format_precision("Row major linear FP32") == "fp32"
    assert format_precision("N/A due to dynamic shapes") == "unknown"
    assert layer_precisions("not json") == [] and layer_precisions(json.dumps({"Layers": ["a", "b"]})) == []


def test_precision_check(caplog):
    half = "Row major linear FP16 format"
    report = check_precision("fp16", layer_precisions(_info(half, half)), {"frames": "HALF", "clean": "HALF"})
    assert report["verified"] and report["by_precision"] == {"fp16": 2} and report["layers"] == 2  # reformat left out
    with caplog.at_level(logging.WARNING, logger="stream_denoise.export.engine"):
        mixed = check_precision("fp16", layer_precisions(_info(half, "Float")), {})
    assert mixed["fp32_layers"] == ["conv1"] and "1 of 2 layers run in fp32" in caplog.text
    with pytest.raises(EngineError, match="no layer runs in fp16"):
        check_precision("fp16", layer_precisions(_info("Float", "Float")), {"frames": "FLOAT"})
    with pytest.raises(EngineError, match="not an fp16 export"):  # no layer formats: the I/O types decide
        check_precision("fp16", layer_precisions(_info("N/A due to dynamic shapes")), {"frames": "FLOAT", "clean": "FLOAT"})
    assert check_precision("int8", layer_precisions(_info("Int8", "Float")), {})["by_precision"] == {"fp32": 1, "int8": 1}
    with pytest.raises(EngineError, match="Q/DQ"):
        check_precision("int8", layer_precisions(_info(half)), {})
    assert "verified" not in check_precision("fp32", layer_precisions(_info("Float")), {})


# --------------------------------------------------------------------------------------------------
# Precision-specific ONNX, run in ONNX Runtime against the fp32 model
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    from stream_denoise.model import create_model, save_model

    torch.manual_seed(3)
    model = create_model("lite")
    for p in model.parameters():  # non-trivial weights
        p.data.add_(torch.randn_like(p) * 0.05)
    return save_model(model, tmp_path_factory.mktemp("model") / "cam.pt")


def _windows(n: int, h: int = 36, w: int = 52) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(30, 220, (n, 1, h, w, 3))
    return np.clip(base + rng.normal(0, 15, (n, 5, h, w, 3)), 0, 255).astype(np.uint8)


def _x(windows: np.ndarray) -> np.ndarray:  # (N, K, H, W, 3) uint8 -> the lite network's input
    from stream_denoise.export.calibrate import to_network_input
    from stream_denoise.model import ARCHS

    return to_network_input(windows, ARCHS["lite"].noise_planes)


def test_fp16_onnx_runs_close_to_the_fp32_model(model_pt, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    monkeypatch.setenv("STREAM_DENOISE_CACHE", str(tmp_path))  # the one export cache (model_files.cache_dir)
    from stream_denoise.backends.onnx_cpu import OnnxRuntimeBackend
    from stream_denoise.export.engine_cache import sha256_file
    from stream_denoise.export.engine_onnx import precision_onnx

    fp16 = precision_onnx(model_pt, "fp16")
    assert fp16.parent == tmp_path / "onnx" and fp16.name.startswith("cam-fp16-")
    fp32 = OnnxRuntimeBackend(precision_onnx(model_pt, "fp32"), threads=1)
    half = OnnxRuntimeBackend(fp16, threads=1)
    assert half._in_type == np.float16 and half.meta["precision"] == "fp16"
    x = _x(_windows(2))
    assert np.abs(half.infer(x) - fp32.infer(x)).max() < 2e-2
    before = (sha256_file(fp16), fp16.stat().st_mtime_ns)
    assert precision_onnx(model_pt, "fp16") == fp16  # made once: the engine key stays put
    assert (sha256_file(fp16), fp16.stat().st_mtime_ns) == before
    assert precision_onnx(fp16, "fp16") == fp16  # an fp16 ONNX is used as is
    with pytest.raises(ModelError, match="needs the .pt model"):
        precision_onnx(fp16, "fp32")


def test_int8_qdq_onnx_for_tensorrt_runs_close_to_the_fp32_model(model_pt, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    monkeypatch.setenv("STREAM_DENOISE_CACHE", str(tmp_path))
    try:
        from stream_denoise.export import calibrate
        from stream_denoise.export.quantize import quantized_ops  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"INT8 quantisation is not available here: {exc}")
    from stream_denoise.backends.onnx_cpu import OnnxRuntimeBackend
    from stream_denoise.export.engine_onnx import has_qdq, precision_onnx

    calib = tmp_path / "cam.npz"
    np.savez(calib, frames=_windows(16), meta=np.array(json.dumps({"format": calibrate.FORMAT, "K": 5, "target": 2})))
    int8 = precision_onnx(model_pt, "int8", calib)
    assert has_qdq(int8) and int8.name.startswith("cam-int8-")
    meta = OnnxRuntimeBackend(int8, threads=1).meta
    assert meta["precision"] == "int8" and json.loads(meta["quantization"])["target"] == "tensorrt"  # symmetric
    x = _x(_windows(2, 40, 48))
    ref = OnnxRuntimeBackend(precision_onnx(model_pt, "fp32"), threads=1).infer(x).copy()
    err = np.abs(OnnxRuntimeBackend(int8, threads=1).infer(x) - ref)
    assert err.mean() < 1e-2 and err.max() < 6e-2
    assert precision_onnx(int8, "int8") == int8  # a Q/DQ ONNX for TensorRT is used as is


def test_int8_needs_calibration_or_a_tensorrt_qdq_onnx(model_pt, tmp_path):
    from stream_denoise.export.engine_onnx import precision_onnx

    with pytest.raises(EngineError, match="--calibration") as err:
        precision_onnx(model_pt, "int8")
    assert "\n" not in str(err.value)
    with pytest.raises(EngineError, match="not found"):
        precision_onnx(model_pt, "int8", tmp_path / "missing.npz")


# --------------------------------------------------------------------------------------------------
# Without TensorRT / without a GPU: one line
# --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not _trt_missing(), reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_says_so_in_one_line(tmp_path):
    from stream_denoise.export.engine import build_engine, find_or_build

    for call in (lambda: build_engine("lite", "fp16", Shapes(), tmp_path),
                 lambda: find_or_build("lite", "fp16", None, tmp_path)):
        with pytest.raises(BackendUnavailable) as err:
            call()
        assert "TensorRT is not installed" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing exported or written before the check


@pytest.mark.skipif(not _trt_missing(), reason="TensorRT is installed here")
def test_tensorrt_backend_is_unavailable_here():
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        create_backend(ModelConfig(backend="tensorrt"))


def test_cuda_backend_is_unavailable_without_a_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    with pytest.raises(BackendUnavailable, match="no CUDA GPU") as err:
        create_backend(ModelConfig(backend="cuda", model="missing-model.pt"))  # said before the model file
    assert "\n" not in str(err.value)


def test_atomic_write_gives_the_file_a_readable_mode_not_mkstemps_0600(tmp_path):
    target = tmp_path / "config.pbtxt"
    before = os.umask(0o022)
    try:
        atomic_write(target, b"x")
        assert target.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)  # a user who keeps their files private gets private files, as with open()
        atomic_write(target, b"z")
        assert target.read_bytes() == b"z" and target.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(before)
    atomic_write(target, b"y", mode=0o640)
    assert target.read_bytes() == b"y" and target.stat().st_mode & 0o777 == 0o640
