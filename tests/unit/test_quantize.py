"""Calibration sets and INT8 Q/DQ models, with real ONNX Runtime sessions at tiny sizes.

No timing here: fp32 vs INT8 speed is measured by ``compare_int8`` in benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from stream_denoise.backends.onnx_cpu import OnnxRuntimeBackend  # noqa: E402
from stream_denoise.export.calibrate import (  # noqa: E402
    FORMAT, build_calibration_set, calibrate, load_calibration_set, parse_size, to_network_input)
from stream_denoise.export.quantize import fidelity, quantize_int8, quantized_ops, runtime_ops  # noqa: E402
from stream_denoise.errors import ConfigError, ModelError, SourceError  # noqa: E402
from stream_denoise.model_files import MODELS_DIR  # noqa: E402

LITE = MODELS_DIR / "lite.onnx"
SIZE = (160, 96)  # (W, H) of the generated clips


def _gradient_clip(i: int) -> np.ndarray:
    """A moving smooth pattern plus noise: (96, 160, 3) uint8 RGB, frame i."""
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:96, 0:160].astype(np.float32)
    base = 128 + 80 * np.sin((x + 3 * i) / 17.0)[..., None] * np.cos(y / 23.0)[..., None] * np.array([1.0, 0.7, 0.4])
    return np.clip(base + rng.normal(0, 12, (96, 160, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    import av

    root = tmp_path_factory.mktemp("calib_clips")
    paths = []
    for n, frames in (("cam_a.mkv", 24), ("cam_b.mkv", 12)):
        path = root / n
        with av.open(str(path), "w") as out:  # lossless, so the test can check exact pixels
            s = out.add_stream("ffv1", rate=25)
            s.width, s.height, s.pix_fmt = SIZE[0], SIZE[1], "bgr0"
            for i in range(frames):
                out.mux(s.encode(av.VideoFrame.from_ndarray(_gradient_clip(i + 100 * len(paths)), format="rgb24")))
            out.mux(s.encode(None))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def calib_set(clips, tmp_path_factory) -> Path:
    return build_calibration_set(clips, tmp_path_factory.mktemp("calib") / "cam.npz", windows=12, size=(64, 96),
                                 seed=3, holdout=4)


@pytest.fixture(scope="module")
def int8_model(calib_set, tmp_path_factory) -> Path:
    return quantize_int8(LITE, calib_set, tmp_path_factory.mktemp("int8") / "lite-cam.int8.onnx")


def test_calibration_set_round_trip(clips, calib_set):
    cs = load_calibration_set(calib_set)
    assert cs.frames.dtype == np.uint8 and cs.frames.shape == (12, 5, 64, 96, 3)
    assert cs.holdout.shape == (4, 5, 64, 96, 3)
    m = cs.meta
    assert m["format"] == FORMAT and m["K"] == 5 and m["target"] == 2 and m["seed"] == 3
    assert [c["name"] for c in m["clips"]] == ["cam_a.mkv", "cam_b.mkv"]
    assert sum(c["windows"] for c in m["clips"]) == 12 and m["created"]
    # Windows are spread over both clips (in proportion to length) and over time.
    with np.load(calib_set) as z:
        index = z["index"]
    assert index.shape == (16, 4)
    assert set(index[:12, 0]) == {0, 1}
    assert len({(c, t) for c, t, _, _ in index[:12]}) >= 10
    # Every stored window is exactly the crop of the decoded frames its index row names.
    from stream_denoise.buffer import reflect_indices
    from stream_denoise.train.data import read_clip

    decoded = [read_clip(c) for c in clips]
    for (clip_no, t, y0, x0), win in zip(index, np.concatenate([cs.frames, cs.holdout])):
        frames = decoded[clip_no]
        expect = frames[reflect_indices(int(t), 5, 2, len(frames))][:, y0 : y0 + 64, x0 : x0 + 96]
        np.testing.assert_array_equal(win, expect)
    # Held-out windows come from the last 10 % of their clip, calibration windows from the rest.
    lengths = [c["frames"] for c in m["clips"]]
    held = [t >= round(0.9 * lengths[c]) for c, t, _, _ in index]
    assert held == [False] * 12 + [True] * 4


def test_network_input_conversion_matches_preprocessing():
    rng = np.random.default_rng(0)
    w = rng.integers(0, 256, (2, 5, 8, 12, 3), dtype=np.uint8)
    x = to_network_input(w)
    assert x.shape == (2, 15, 8, 12) and x.dtype == np.float32
    np.testing.assert_array_equal(x[1, 3 * 4 + 2], w[1, 4, :, :, 2].astype(np.float32) * np.float32(1 / 255))
    assert x.min() >= 0 and x.max() <= 1


def test_native_resolution_set_and_budget_crops(clips, tmp_path):
    full = load_calibration_set(build_calibration_set(clips[:1], tmp_path / "full.npz", windows=4))
    assert full.size == (96, 160) and full.meta["crop"] == "full"
    small = load_calibration_set(build_calibration_set(clips[:1], tmp_path / "small.npz", windows=4,
                                                       max_bytes=4 * 5 * 3 * 48 * 80))
    assert small.meta["crop"] == "random-crop"
    h, w = small.size
    assert h % 4 == 0 and w % 4 == 0 and h * w <= 48 * 80


def test_int8_model_is_qdq_keeps_metadata_and_runs(int8_model):
    proto = onnx.load(str(int8_model))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = {p.key: p.value for p in proto.metadata_props}
    src = {p.key: p.value for p in onnx.load(str(LITE)).metadata_props}
    for key in ("frames", "target", "stride", "window", "arch"):
        assert meta[key] == src[key]
    assert meta["precision"] == "int8"
    q = json.loads(meta["quantization"])
    assert q["target"] == "cpu" and q["windows"] == 12 and q["calibration"] == "cam.npz"
    # The interior convolutions are quantised; ORT's CPU EP runs them as integer kernels.
    quantised = quantized_ops(int8_model)
    assert len(quantised["Conv"]) >= 5
    assert runtime_ops(int8_model)["QLinearConv"] >= 5
    # The input is represented exactly: scale 1/255, zero point 0.
    from onnx import numpy_helper

    init = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    q_in = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "frames")
    assert float(init[q_in.input[1]]) == pytest.approx(1 / 255) and int(init[q_in.input[2]]) == 0

    be = OnnxRuntimeBackend(int8_model, threads=1)
    assert (be.frames, be.target, be.stride, be.meta["precision"]) == (5, 2, 4, "int8")


def test_int8_output_close_to_fp32(int8_model, calib_set):
    held = load_calibration_set(calib_set).holdout
    ref = OnnxRuntimeBackend(LITE, threads=1)
    x = to_network_input(held[:1], ref.noise_planes)  # the shipped lite may read noise maps
    fp32 = ref.infer(x).copy()
    int8 = OnnxRuntimeBackend(int8_model, threads=1).infer(x)
    psnr = 10 * np.log10(1.0 / np.mean((np.clip(fp32, 0, 1) - np.clip(int8, 0, 1)) ** 2))
    assert psnr > 30, psnr
    f = fidelity(LITE, int8_model, held[:2], threads=1)
    assert f["psnr_db"] > 30 and f["windows"] == 2


def test_tensorrt_target_is_symmetric(calib_set, tmp_path):
    out = quantize_int8(LITE, calib_set, tmp_path / "trt.onnx", target="tensorrt", max_windows=4)
    from onnx import numpy_helper

    proto = onnx.load(str(out))
    init = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    zps = [init[n.input[2]] for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
           and len(n.input) > 2 and n.input[2] in init]
    assert zps and all(z.dtype in (np.int8, np.int32) and not np.any(z) for z in zps)


def test_missing_or_bad_calibration_set_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_calibration_set(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ConfigError, match="not a readable"):
        load_calibration_set(bad)
    other = tmp_path / "other.npz"
    np.savez(other, frames=np.zeros((2, 5, 8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="not a stream_denoise calibration set"):
        load_calibration_set(other)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, frames=np.zeros((2, 15, 8, 8), np.float32), meta=np.array(json.dumps({"format": FORMAT})))
    with pytest.raises(ConfigError, match="uint8"):
        load_calibration_set(wrong)
    with pytest.raises(ConfigError):  # quantize_int8 surfaces the same error
        quantize_int8(LITE, tmp_path / "nope.npz", tmp_path / "x.onnx")


def test_bad_model_and_mismatched_window_are_clear_errors(calib_set, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ModelError):
        quantize_int8(junk, calib_set, tmp_path / "x.onnx")
    with pytest.raises(ModelError, match="not found"):
        quantize_int8(tmp_path / "absent.onnx", calib_set, tmp_path / "x.onnx")
    three = tmp_path / "k3.npz"
    cs = load_calibration_set(calib_set)
    np.savez(three, frames=cs.frames[:, :3], meta=np.array(json.dumps({**cs.meta, "K": 3})))
    with pytest.raises(ConfigError, match="3 frames"):
        quantize_int8(LITE, three, tmp_path / "x.onnx")


def test_build_errors(clips, tmp_path):
    with pytest.raises(ConfigError, match="cropped, never upscaled"):
        build_calibration_set(clips, tmp_path / "a.npz", windows=2, size=(200, 96))
    with pytest.raises(ConfigError, match="multiples of 4"):
        build_calibration_set(clips, tmp_path / "a.npz", windows=2, size=(30, 30))
    with pytest.raises(SourceError):
        build_calibration_set([tmp_path / "missing.mp4"], tmp_path / "a.npz")
    with pytest.raises(ConfigError):
        build_calibration_set([], tmp_path / "a.npz")
    assert parse_size("360x640") == (360, 640)
    with pytest.raises(ConfigError):
        parse_size("640")


def test_calibrate_command_writes_set_and_int8_model(clips, tmp_path):
    npz, int8 = calibrate(clips, "lite", tmp_path / "calibration", windows=6, size=(48, 64), holdout=2)
    assert npz == tmp_path / "calibration" / "cam_a.npz" and npz.is_file()
    assert int8 == tmp_path / "calibration" / "lite-cam_a.int8.onnx" and int8.is_file()
    assert OnnxRuntimeBackend(int8, threads=1).meta["precision"] == "int8"


def test_compare_int8_reports_quality_and_speed(int8_model, clips):
    from stream_denoise.export.quantize import compare_int8

    r = compare_int8(LITE, int8_model, clips[1:], conditions=("gaussian30",), max_frames=3, sizes=((32, 24),),
                     threads=1, runs=1, warmup=0)
    q = r["quality"]["cam_b.mkv/gaussian30"]
    assert q["frames"] == 3 and q["size"] == "160x96"
    assert q["delta_db"] == pytest.approx(q["int8"] - q["fp32"])
    assert abs(q["delta_db"]) < 1.0 and q["int8_vs_fp32_db"] > 30
    s = r["speed"]["32x24"]
    assert s["fp32_ms"] > 0 and s["int8_ms"] > 0 and s["speedup"] == pytest.approx(s["fp32_ms"] / s["int8_ms"])
