"""Frames to network input and back: the one place pre- and post-processing are defined.

A network's input (``Layout``) is K frame blocks, oldest -> newest, each the frame's RGB as float32
in [0, 1] followed by its ``noise_planes`` noise level maps (``noise_level.level_map``; none for
networks that are not noise-aware), padded by reflection at the bottom/right to the network's
stride: (N, K * (3 + P), Hp, Wp). Its output is (N, 3, Hp, Wp) float32, cropped back to (H, W),
scaled, rounded and clipped to (H, W, 3) uint8 RGB. The host path (numpy) is used by inference on
the CPU, training, calibration and Ray; ``frame_block_torch`` is its twin on a GPU (the same
arithmetic: x * float32(1/255), the same reflection, the same maps).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from . import noise_level
from .frame import check_pixels


class WindowFacts(Protocol):
    """What a backend declares about its window (``backends.Backend``)."""

    @property
    def frames(self) -> int: ...
    @property
    def target(self) -> int: ...
    @property
    def stride(self) -> int: ...
    @property
    def noise_planes(self) -> int: ...
    @property
    def map_curve(self) -> noise_level.MapCurve | None: ...


@dataclass(frozen=True)
class Layout:
    """A network's input contract: K frames, the target slot, the stride, noise map planes per frame."""

    frames: int
    target: int
    stride: int
    noise_planes: int = 0
    curve: noise_level.MapCurve | None = None  # what the maps are read through (``noise_level.lut``)

    @property
    def block(self) -> int:
        return 3 + self.noise_planes

    @property
    def channels(self) -> int:
        return self.frames * self.block

    @property
    def window(self) -> str:
        return "causal" if self.target == self.frames - 1 else "centered"

    def padded(self, h: int, w: int) -> tuple[int, int]:
        s = self.stride
        return -(-h // s) * s, -(-w // s) * s

    @classmethod
    def of(cls, net: WindowFacts) -> Layout:
        """The layout a backend (or anything that declares the window's facts) takes."""
        return cls(net.frames, net.target, net.stride, net.noise_planes, net.map_curve)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Layout:
        """From a model's metadata (ONNX ``metadata_props``, an engine manifest, Triton parameters);
        files from before noise maps have no ``noise_planes``, files without a map curve no ``map_curve``."""
        return cls(int(meta["frames"]), int(meta["target"]), int(meta["stride"]), int(meta.get("noise_planes", 0)),
                   noise_level.MapCurve.from_meta(meta.get("map_curve")))


def frame_block(pixels: np.ndarray, layout: Layout, sigmas: np.ndarray | None = None,
                out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (block, Hp, Wp) float32: RGB / 255 then the noise maps for ``sigmas``
    (``noise_level.estimate``'s shape; zeros when None), reflect-padded to the stride (into ``out``)."""
    check_pixels(pixels)
    h, w = pixels.shape[:2]
    hp, wp = layout.padded(h, w)
    block = np.empty((layout.block, hp, wp), np.float32) if out is None else out
    np.multiply(pixels.transpose(2, 0, 1), np.float32(1 / 255), out=block[:3, :h, :w], casting="unsafe")
    if layout.noise_planes:
        if sigmas is None:
            block[3:, :h, :w] = 0.0
        else:
            block[3:, :h, :w] = noise_level.level_map(pixels, sigmas, layout.curve)[: layout.noise_planes]
    if hp > h:
        block[:, h:, :w] = reflect(block[:, :h, :w], hp - h, axis=1)
    if wp > w:
        block[:, :, w:] = reflect(block[:, :, :w], wp - w, axis=2)
    return block


def window_input(windows: np.ndarray, layout: Layout, sigmas: np.ndarray | None = None) -> np.ndarray:
    """(N, K, H, W, 3) uint8 RGB windows -> (N, K * block, Hp, Wp) float32 network input.
    ``sigmas``: one noise reading for all, (PLANES, bands), or one per window, (N, PLANES, bands)."""
    n, k, h, w, _ = windows.shape
    hp, wp = layout.padded(h, w)
    x = np.empty((n, k, layout.block, hp, wp), np.float32)
    for i in range(n):
        sig = sigmas if sigmas is None or sigmas.ndim == 2 else sigmas[i]
        for j in range(k):
            frame_block(windows[i, j], layout, sig, out=x[i, j])
    return x.reshape(n, k * layout.block, hp, wp)


def to_uint8_rgb(chw: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 in [0, 1] -> (H, W, 3) uint8, rounded (x*255 + 0.5, clipped, truncated).
    Works in place on ``chw``. Channel by channel, then one interleave: a strided transpose of
    floats costs 3x more (0.75 vs 0.2 ms at 640x360)."""
    import cv2  # lazy: importing the package stays light

    np.multiply(chw, 255.0, out=chw)
    np.add(chw, 0.5, out=chw)
    np.clip(chw, 0.0, 255.0, out=chw)
    u8 = chw.astype(np.uint8)  # truncation of x + 0.5 == rounding
    return cv2.merge([u8[0], u8[1], u8[2]]) if len(u8) == 3 else np.ascontiguousarray(u8.transpose(1, 2, 0))


def to_unit_torch(u8: Any) -> Any:
    """(..., H, W, 3) uint8 tensor -> (..., 3, H, W) float32 in [0, 1] on its device: training's
    windows and targets. It divides by 255, as training always has; ``frame_block(_torch)``
    multiply by 1/255 in float32, which differs by one ulp on 126 of the 256 levels (kept apart so
    neither shipped inference nor a resumed training run changes)."""
    return u8.movedim(-1, -3).float().div_(255)


def reflect_index(size: int, i: int) -> int:
    """Index of the i-th padded row/col after ``size``, mirrored without repeating the edge."""
    return min(max(size - 2 - (i % max(size - 1, 1)), 0), size - 1)


def reflect(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    """The n rows/cols after the end of ``a`` along axis, mirrored without repeating the edge."""
    size = a.shape[axis]
    return np.take(a, [reflect_index(size, i) for i in range(n)], axis=axis)


def frame_block_torch(u8: Any, block: Any, lut: Any | None = None) -> None:
    """``frame_block`` on a torch device: (H, W, 3) uint8 -> ``block`` (3 + P, Hp, Wp) in place;
    ``lut`` (P, 256) from ``noise_level.lut`` (zeros for the maps when None)."""
    h, w = u8.shape[0], u8.shape[1]
    hp, wp = block.shape[1], block.shape[2]
    core = block[:, :h, :w]
    core[:3].copy_(u8.permute(2, 0, 1))
    core[:3].mul_(1 / 255)
    if block.shape[0] > 3:
        if lut is None:
            core[3:].zero_()
        else:
            core[3:].copy_(noise_level.level_map_torch(u8[None], lut[None])[0])
    for i in range(hp - h):
        block[:, h + i, :w].copy_(block[:, reflect_index(h, i), :w])
    for j in range(wp - w):
        block[:, :, w + j].copy_(block[:, :, reflect_index(w, j)])
