"""Synthetic camera noise: the generator used by training, tests and benchmarks.

All functions take and return clips as (T, H, W, 3) uint8 **RGB** arrays.

A camera condition is simulated in this order, as a real sensor + ISP + encoder would:

1. sRGB -> linear light (inverse sRGB transfer).
2. Optional Bayer mosaic (RGGB): each photosite keeps one colour.
3. Shot noise: Poisson with ``photons`` electrons at full white (fewer photons = higher ISO),
   plus Gaussian read noise of ``read_noise`` electrons.
4. Optional demosaicing (OpenCV bilinear/edge-aware), which spatially correlates the noise.
5. linear -> sRGB, 8-bit quantisation.
6. Optional H.264/H.265 encode + decode at a CCTV-like bit rate (``bits_per_pixel``), which
   reshapes the noise into blocks and copies it between frames in skipped blocks.

``gaussian`` is plain additive white Gaussian noise of ``sigma`` (8-bit units) in sRGB.
The named presets in ``CONDITIONS`` are the ones benchmarks report.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["gaussian", "camera"]

# The shadows: clean values (mean of R, G, B, 8-bit levels) below this. Noise clipped at black lifts
# their mean; the benchmark and the pre-training's validation measure how far a denoiser shifts it.
DARK_LEVEL = 32


@dataclass(frozen=True)
class NoiseSpec:
    """Parameters of one noise condition.

    kind:           "gaussian" (AWGN in sRGB) or "camera" (Poisson-Gaussian in linear light + ISP).
    sigma:          gaussian only: standard deviation in 8-bit units (0..255 scale).
    photons:        camera only: electrons collected at full white; ISO ~ 100 * 4000 / photons.
    read_noise:     camera only: read-noise standard deviation in electrons.
    mosaic:         camera only: Bayer mosaic + demosaicing (spatially correlated noise).
    codec:          None, "h264" or "hevc": compress the noisy clip and decode it back.
    bits_per_pixel: codec bit rate in bits per pixel per frame (CCTV: ~0.05-0.15).
    fps:            frame rate given to the encoder (only affects rate control).
    """

    kind: Kind = "gaussian"
    sigma: float = 30.0
    photons: float = 400.0
    read_noise: float = 3.0
    mosaic: bool = False
    codec: Literal["h264", "hevc"] | None = None
    bits_per_pixel: float = 0.1
    fps: int = 25

    @property
    def iso(self) -> float:
        return 100.0 * 4000.0 / self.photons


CONDITIONS: dict[str, NoiseSpec] = {
    "gaussian15": NoiseSpec("gaussian", sigma=15),
    "gaussian30": NoiseSpec("gaussian", sigma=30),
    "gaussian50": NoiseSpec("gaussian", sigma=50),
    # Low light, no ISP correlation: Poisson-Gaussian at ISO ~1600 and ~6400.
    "lowlight-iso1600": NoiseSpec("camera", photons=250, read_noise=3.0),
    "lowlight-iso6400": NoiseSpec("camera", photons=62.5, read_noise=4.0),
    # CCTV-like: low light + Bayer demosaicing + H.264 at ~0.1 bit/pixel.
    "cctv": NoiseSpec("camera", photons=150, read_noise=3.0, mosaic=True, codec="h264", bits_per_pixel=0.1),
}


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """x: float in [0, 1] sRGB -> linear light."""
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """x: float linear light (clipped to [0, 1]) -> sRGB in [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def add_noise(clip: np.ndarray, spec: NoiseSpec, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Noisy version of a clean clip. clip: (T, H, W, 3) uint8 RGB -> same shape/dtype."""
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
        raise ValueError(f"expected (T,H,W,3) uint8, got {clip.shape} {clip.dtype}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    x = clip.astype(np.float32) / 255.0
    if spec.kind == "gaussian":
        y = x + rng.normal(0.0, spec.sigma / 255.0, x.shape).astype(np.float32)
    else:
        y = _camera(x, spec, rng)
    out = np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)
    if spec.codec is not None:
        out = compress(out, spec.codec, spec.bits_per_pixel, spec.fps)
    return out


def _camera(x: np.ndarray, spec: NoiseSpec, rng: np.random.Generator) -> np.ndarray:
    import cv2

    lin = srgb_to_linear(x)
    if spec.mosaic:
        t, h, w, _ = lin.shape
        raw = np.empty((t, h, w), np.float32)
        raw[:, 0::2, 0::2] = lin[:, 0::2, 0::2, 0]  # R
        raw[:, 0::2, 1::2] = lin[:, 0::2, 1::2, 1]  # G
        raw[:, 1::2, 0::2] = lin[:, 1::2, 0::2, 1]  # G
        raw[:, 1::2, 1::2] = lin[:, 1::2, 1::2, 2]  # B
        raw = _shot_read(raw, spec, rng)
        raw16 = np.clip(raw * 65535.0, 0, 65535).astype(np.uint16)
        # OpenCV names Bayer patterns by the second row; RGGB is COLOR_BayerBG2RGB.
        lin = np.stack([cv2.cvtColor(r, cv2.COLOR_BayerBG2RGB) for r in raw16]).astype(np.float32) / 65535.0
    else:
        lin = _shot_read(lin, spec, rng)
    return linear_to_srgb(lin)


def _shot_read(lin: np.ndarray, spec: NoiseSpec, rng: np.random.Generator) -> np.ndarray:
    electrons = rng.poisson(np.clip(lin, 0, 1) * spec.photons).astype(np.float32)
    electrons += rng.normal(0.0, spec.read_noise, lin.shape).astype(np.float32)
    return electrons / spec.photons


def compress(clip: np.ndarray, codec: str, bits_per_pixel: float, fps: int = 25) -> np.ndarray:
    """Encode (T,H,W,3) uint8 RGB with H.264/H.265 at a CCTV-like bit rate and decode it back."""
    return decode(encode(clip, codec, bits_per_pixel, fps))[:, : clip.shape[1], : clip.shape[2]]


def encode(clip: np.ndarray, codec: str, bits_per_pixel: float, fps: int = 25) -> bytes:
    """(T,H,W,3) uint8 RGB -> a Matroska file's bytes, H.264 or H.265 as a camera sends it: no
    B-frames, a keyframe every 2 s, fast preset, rate-controlled to ``bits_per_pixel``; odd sizes
    are edge-padded to even."""
    import av

    t, h, w, _ = clip.shape
    ph, pw = h + h % 2, w + w % 2
    if (ph, pw) != (h, w):
        clip = np.pad(clip, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("libx264" if codec == "h264" else "libx265", rate=fps)
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        stream.bit_rate = max(int(bits_per_pixel * pw * ph * fps), 20_000)
        opts = {"preset": "veryfast", "bf": "0", "g": str(2 * fps)}
        if codec == "h264":
            opts["tune"] = "zerolatency"
        else:
            opts["x265-params"] = "log-level=error"
        stream.codec_context.options = opts
        for img in clip:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")))
        out.mux(stream.encode(None))
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """An encoded clip's bytes -> (T,H,W,3) uint8 RGB (``media.read_clip``: PyAV where installed, else
    OpenCV's FFmpeg)."""
    from .media import read_clip

    return read_clip(data)


def random_spec(rng: np.random.Generator) -> NoiseSpec:
    """A random condition of the family above, for pre-training across what cameras deliver:

    * 25 %: Gaussian, sigma log-uniform in 0.5-60 levels;
    * 65 %: Poisson-Gaussian sensor noise, 30-30 000 photons at full white (log-uniform; ISO
      ~13-13 000), read noise 0.5-8 e-; Bayer mosaic + demosaicing 60 %; a codec 50 % (H.264
      80 %, H.265 20 %) at 0.04-0.6 bit/pixel (log-uniform);
    * 10 %: a nearly clean picture (100 000 photons) through such a codec alone.
    """
    r = rng.random()
    if r < 0.25:
        return NoiseSpec("gaussian", sigma=float(np.exp(rng.uniform(np.log(0.5), np.log(60)))))
    clean = r >= 0.9
    photons = 1e5 if clean else float(np.exp(rng.uniform(np.log(30), np.log(30000))))
    coded = clean or rng.random() < 0.5
    return NoiseSpec(
        "camera",
        photons=photons,
        read_noise=0.5 if clean else float(rng.uniform(0.5, 8)),
        mosaic=bool(rng.random() < 0.6),
        codec=("h264" if rng.random() < 0.8 else "hevc") if coded else None,
        bits_per_pixel=float(np.exp(rng.uniform(np.log(0.04), np.log(0.6)))),
    )
