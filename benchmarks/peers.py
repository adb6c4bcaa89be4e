"""Classical denoisers we compare against, each with a small parameter grid.

Every peer maps a noisy clip (T, H, W, 3) uint8 RGB to a denoised one of the same shape. The
quality benchmark runs each grid point on the scored frames and keeps the best PSNR (reported
with the chosen setting). ``GRIDS`` are the full grids, ``QUICK_GRIDS`` the one-point grids of
``--quick``. Parameters are cartesian products of the listed values.

- ffmpeg hqdn3d / atadenoise / nlmeans: the ffmpeg CLI on raw rgb24 through pipes, filtering in
  yuv444p (hqdn3d has no RGB path; full-resolution chroma for all three).
- OpenCV fastNlMeansDenoisingColoredMulti, temporal window 5 (reflected at the clip's ends, as
  our Denoiser's window is).
- BM4D (PyPI ``bm4d``), told the noise std; run on an orthonormal opponent-colour transform of
  the RGB volume (H, W, T) so the std is the same in every channel, block matching on luma.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stream_denoise.buffer import reflect_indices

Params = dict[str, float | int | str]
Runner = Callable[[np.ndarray, Params, float, int], np.ndarray]  # (clip, params, sigma, threads) -> clip

GRIDS: dict[str, dict[str, list]] = {
    "hqdn3d": {"spatial": [2, 4, 7, 11, 16, 24, 32, 48, 64], "temporal_ratio": [1.5]},
    "atadenoise": {"a": [0.02, 0.05, 0.1, 0.2, 0.3], "s": [9]},
    "nlmeans": {"s": [2, 4, 7, 11, 16, 24], "p": [7], "r": [15]},
    "opencv_nlm": {"h": [5, 9, 14, 20, 28, 40], "template": [7], "search": [21]},
    "bm4d": {"sigma_scale": [1.0], "profile": ["np"]},
}
QUICK_GRIDS: dict[str, dict[str, list]] = {
    "hqdn3d": {"spatial": [7], "temporal_ratio": [1.5]},
    "atadenoise": {"a": [0.1], "s": [9]},
    "nlmeans": {"s": [7], "p": [7], "r": [15]},
    "opencv_nlm": {"h": [14], "template": [7], "search": [21]},
    "bm4d": {"sigma_scale": [1.0], "profile": ["np"]},
}


def points(grid: dict[str, list]) -> list[Params]:
    """The cartesian product of a grid as a list of parameter dicts."""
    keys = list(grid)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(grid[k] for k in keys))]


# --- ffmpeg ------------------------------------------------------------------------------------

def _ffmpeg_filter(name: str, p: Params) -> str:
    if name == "hqdn3d":
        s, t = float(p["spatial"]), float(p["spatial"]) * float(p["temporal_ratio"])
        return f"hqdn3d={s:g}:{s:g}:{t:g}:{t:g}"
    if name == "atadenoise":
        a, b = float(p["a"]), 2 * float(p["a"])
        return "atadenoise=" + ":".join(f"{i}a={a:g}:{i}b={b:g}" for i in range(3)) + f":s={int(p['s'])}"
    if name == "nlmeans":
        return f"nlmeans=s={float(p['s']):g}:p={int(p['p'])}:r={int(p['r'])}"
    raise ValueError(name)


def ffmpeg_run(clip: np.ndarray, vf: str, threads: int = 2) -> np.ndarray:
    """Filter a clip with the ffmpeg CLI, raw rgb24 in and out through pipes."""
    t, h, w, _ = clip.shape
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", "25", "-i", "pipe:0", "-filter_threads", str(threads),
           "-sws_flags", "accurate_rnd+full_chroma_int", "-vf", f"format=yuv444p,{vf}",
           "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    try:  # ffmpeg 5.1 atadenoise never exits when a pipe holds < s/2 frames
        r = subprocess.run(cmd, input=np.ascontiguousarray(clip).tobytes(), capture_output=True, check=False,
                           timeout=30 + 3 * t)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"ffmpeg {vf} did not finish on {t} frames") from None
    if r.returncode != 0:
        raise RuntimeError(f"ffmpeg {vf} failed: {r.stderr.decode(errors='replace')[-500:]}")
    out = np.frombuffer(r.stdout, np.uint8)
    if out.size != clip.size:
        raise RuntimeError(f"ffmpeg {vf} returned {out.size // (h * w * 3)} frames for {t}")
    return out.reshape(clip.shape)


def _ffmpeg_peer(name: str) -> Runner:
    return lambda clip, p, sigma, threads: ffmpeg_run(clip, _ffmpeg_filter(name, p), threads)


# --- OpenCV ------------------------------------------------------------------------------------

def opencv_nlm(clip: np.ndarray, p: Params, sigma: float, threads: int, targets: int | None = None) -> np.ndarray:
    """fastNlMeansDenoisingColoredMulti over a 5-frame window (h = hColor); only the first
    ``targets`` frames are denoised when given (speed runs), the rest are left as they are."""
    import cv2

    cv2.setNumThreads(threads)
    bgr = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in clip]
    n, h = len(bgr), float(p["h"])
    out = clip.copy()
    for t in range(n if targets is None else min(targets, n)):
        idx = reflect_indices(t, 5, 2, n) if n > 1 else [0] * 5  # the window reflected at the clip's ends
        d = cv2.fastNlMeansDenoisingColoredMulti([bgr[i] for i in idx], 2, 5, None, h, h,
                                                 int(p["template"]), int(p["search"]))
        out[t] = cv2.cvtColor(d, cv2.COLOR_BGR2RGB)
    return out


# --- BM4D --------------------------------------------------------------------------------------

_OPP = np.array([[1, 1, 1], [1, 0, -1], [1, -2, 1]], np.float64) / np.sqrt([[3], [2], [6]])  # orthonormal


def bm4d_run(clip: np.ndarray, p: Params, sigma: float, threads: int) -> np.ndarray:
    """BM4D on the (H, W, T) volume of each opponent channel, told std ``sigma * sigma_scale``."""
    import bm4d

    x = clip.astype(np.float64) / 255.0 @ _OPP.T  # (T, H, W, 3)
    z = np.ascontiguousarray(x.transpose(3, 1, 2, 0))  # (3, H, W, T)
    y = np.asarray(bm4d.bm4d_multichannel(z, sigma * float(p["sigma_scale"]) / 255.0, str(p["profile"])))
    rgb = y.transpose(3, 1, 2, 0) @ _OPP  # inverse of an orthonormal matrix = its transpose
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    run: Runner
    temporal: bool
    subset: bool = False  # too slow for every frame: scored on the first ``--bm4d-frames`` live frames

    def available(self) -> str | None:
        """None when it can run here, else why not."""
        if self.name in ("hqdn3d", "atadenoise", "nlmeans") and shutil.which("ffmpeg") is None:
            return "ffmpeg CLI not found"
        mod = {"opencv_nlm": "cv2", "bm4d": "bm4d"}.get(self.name)
        if mod:
            try:
                __import__(mod)
            except ImportError:
                return f"python package {mod} not installed"
        return None

    def timed(self, clip: np.ndarray, p: Params, sigma: float, threads: int) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        out = self.run(clip, p, sigma, threads)
        return out, time.perf_counter() - t0


PEERS: dict[str, Peer] = {
    "hqdn3d": Peer("hqdn3d", "ffmpeg hqdn3d", _ffmpeg_peer("hqdn3d"), temporal=True),
    "atadenoise": Peer("atadenoise", "ffmpeg atadenoise", _ffmpeg_peer("atadenoise"), temporal=True),
    "nlmeans": Peer("nlmeans", "ffmpeg nlmeans", _ffmpeg_peer("nlmeans"), temporal=False),
    "opencv_nlm": Peer("opencv_nlm", "OpenCV NLM multi (5 frames)", opencv_nlm, temporal=True),
    "bm4d": Peer("bm4d", "BM4D (true sigma)", bm4d_run, temporal=True, subset=True),
}
