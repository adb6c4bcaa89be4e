"""TensorRT: engine build, precision check, cache hit, run, CUDA graphs (GPU + TensorRT only)."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

SMALL = dict(min=(32, 32), opt=(64, 96), max=(128, 160))


@pytest.fixture(scope="module")
def ort_fp32(tiny_model, tmp_path_factory):
    from stream_denoise.backends.onnx_cpu import OnnxRuntimeBackend
    from stream_denoise.export.to_onnx import export_onnx

    return OnnxRuntimeBackend(export_onnx(tiny_model, tmp_path_factory.mktemp("ort") / "m.onnx"), threads=2)


def test_fp16_engine_build_run_precision_and_cache_hit(trt, tiny_model, ort_fp32, tmp_path, caplog):
    from stream_denoise.backends.tensorrt_engine import TensorRTBackend
    from stream_denoise.backends.tensorrt_runtime import Shapes
    from stream_denoise.export.engine import find_or_build
    from stream_denoise.export.engine_cache import sha256_file
    from stream_denoise.errors import EngineError

    engines = tmp_path / "engines"
    with caplog.at_level(logging.INFO, logger="stream_denoise.export.engine"):
        cached, owner = find_or_build(tiny_model, "fp16", Shapes(**SMALL), engines)
    assert cached.built and cached.path.name.startswith("tiny-fp16-") and cached.path.suffix == ".engine"
    m = json.loads(cached.path.with_suffix(".json").read_text())
    assert m["precision"] == "fp16" and m["tensorrt"] == trt.__version__
    assert m["onnx_sha256"] == sha256_file(m["onnx"]) and m["profile"]["max"] == [1, 25, 128, 160]
    assert m["gpu"] and m["compute_capability"] and m["model"] == {**m["model"], "frames": 5, "target": 2, "stride": 4}
    check = m["precision_check"]
    assert check["by_precision"].get("fp16", 0) > 0 and check["io"] == {"frames": "HALF", "clean": "HALF"}
    assert list(engines.glob("timing-*.cache")), "the timing cache is kept in engines/"
    assert "engine build:" in caplog.text  # progress

    backend = TensorRTBackend(cached, owner)
    rng = np.random.default_rng(0)
    for h, w in [(64, 96), (32, 32), (128, 160)]:
        x = rng.random((1, 25, h, w), dtype=np.float32)
        for _ in range(3):  # eager, capture, replay
            assert np.abs(backend.infer(x) - ort_fp32.infer(x)).max() < 2e-2
    assert backend.executor.captures == 3
    with pytest.raises(EngineError, match="outside the engine's profile"):
        backend.infer(np.zeros((1, 25, 256, 256), np.float32))

    again, _ = find_or_build(tiny_model, "fp16", Shapes(**SMALL), engines)
    assert not again.built and again.path == cached.path
    any_profile, _ = find_or_build(tiny_model, "fp16", None, engines)  # what from_config does
    assert not any_profile.built and any_profile.path == cached.path

    # a plan TensorRT cannot deserialise, with a manifest that matches it: a miss, rebuilt once
    garbage = b"not a plan" * 100
    cached.path.write_bytes(garbage)
    m["engine_sha256"] = hashlib.sha256(garbage).hexdigest()
    cached.path.with_suffix(".json").write_text(json.dumps(m))
    rebuilt, _ = find_or_build(tiny_model, "fp16", Shapes(**SMALL), engines)
    assert rebuilt.built and rebuilt.path.read_bytes() != garbage


def test_tensorrt_window_runner_and_graphs_match_the_denoiser(trt, tiny_model, ort_fp32, tmp_path, noisy_frames, denoiser_outputs, runner_outputs):
    from stream_denoise.backends.tensorrt_engine import TensorRTBackend
    from stream_denoise.backends.tensorrt_runtime import Shapes
    from stream_denoise.export.engine import build_engine

    path = build_engine(tiny_model, "fp16", Shapes(**SMALL), tmp_path)
    graphed = TensorRTBackend.from_engine(path)
    eager = TensorRTBackend.from_engine(path, graphs=False)
    frames = noisy_frames(10, 60, 90)
    ref = denoiser_outputs(ort_fp32, frames)
    got = runner_outputs(graphed.window_runner(), frames)
    assert graphed.executor.graph_active
    for a, b in zip(ref, got, strict=True):
        assert np.abs(a.astype(np.int16) - b).max() <= 6
    x = np.random.default_rng(3).random((1, 25, 64, 96), dtype=np.float32)
    runs = [graphed.infer(x).copy() for _ in range(3)]  # eager, capture + replay, replay
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])
    assert np.allclose(runs[0], eager.infer(x), rtol=0, atol=1e-3) and not eager.executor.graph_active


def test_int8_engine_from_calibration(trt, tiny_model, ort_fp32, tmp_path):
    try:
        from stream_denoise.export import calibrate
        from stream_denoise.export.quantize import quantize_int8  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"INT8 quantisation is not available: {exc}")
    from stream_denoise.backends.tensorrt_engine import TensorRTBackend
    from stream_denoise.backends.tensorrt_runtime import Shapes
    from stream_denoise.export.engine import find_or_build

    rng = np.random.default_rng(0)
    base = rng.integers(30, 220, (24, 1, 64, 96, 3))
    windows = np.clip(base + rng.normal(0, 15, (24, 5, 64, 96, 3)), 0, 255).astype(np.uint8)
    calib = tmp_path / "cam.npz"
    np.savez(calib, frames=windows, meta=np.array(json.dumps({"format": calibrate.FORMAT, "K": 5, "target": 2})))
    cached, owner = find_or_build(tiny_model, "int8", Shapes(**SMALL), tmp_path / "engines", calib)
    assert cached.manifest["precision_check"]["by_precision"].get("int8", 0) > 0
    backend = TensorRTBackend(cached, owner)
    x = calibrate.to_network_input(windows[:1], ort_fp32.noise_planes)
    err = np.abs(backend.infer(x) - ort_fp32.infer(x))
    assert err.mean() < 1e-2 and err.max() < 8e-2
