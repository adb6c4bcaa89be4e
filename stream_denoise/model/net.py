"""A multi-frame U-Net that denoises the centre (or last) frame of a K-frame window.

Input ``x``: (N, K*(3 + P), H, W) float32, frames oldest -> newest, each as its RGB in [0, 1]
followed, for a noise-aware network, by its P = ``Arch.noise_planes`` noise level maps
(``stream_denoise.noise_level``: the noise's standard deviation at each pixel as measured at each
scale, in units of ``noise_level.MAP_SCALE`` 8-bit levels). Each frame's block is contiguous, so a
window of a stream is K consecutive frame blocks and the runtime binds it without assembling it. H and W are multiples of the network's ``stride``
(2 ** levels). Output: (N, 3, H, W), the clean estimate of frame ``target`` (K//2 for a centered
window, K-1 for a causal one).

The graph is export-friendly by construction: Conv, ConvTranspose (k2 s2), ReLU, Add, Concat and
one Slice -- no Python branches on shapes, no crops, nothing TensorRT or ONNX Runtime lacks natively.

Shape: an optional 3x3 stem at full resolution; per level a 2x2 stride-2 convolution down and
``enc[l]`` 3x3 convolutions; ``mid`` 3x3 convolutions (with a residual) at the deepest level; per
level on the way up a 2x2 stride-2 transposed convolution, the encoder's features added, and
``dec[l]`` 3x3 convolutions; the output convolution sees the full-resolution features and the
target frame, and its output is added to the target frame. The first networks of this project
(two levels, no stem, no noise map) are this design with other numbers; their files still load
(``from_v1``).

The blind spot that masked self-supervised training needs is made by masking (``train.masking``).
At inference nothing is masked: the network sees every pixel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..noise_level import MapCurve
from ..planes import Layout

STRIDE = 4  # the smallest stride of any network (two levels); a model's own is ``model.stride``


@dataclass(frozen=True)
class Arch:
    """widths[l]: channels at 1/2**l resolution (widths[0] at full resolution); enc[l-1]: 3x3
    convs after the downsampling to level l (l = 1 .. levels-1); mid: 3x3 convs at the deepest
    level; dec[l]: 3x3 convs at level l on the way up (l = 0 .. levels-1); stem: a 3x3 conv at
    full resolution before the first downsampling (its features are added back at level 0);
    noise_planes: channels after each frame's RGB carrying its noise level maps."""

    widths: tuple[int, ...]
    enc: tuple[int, ...]
    mid: int
    dec: tuple[int, ...]
    stem: bool = False
    noise_planes: int = 0

    def __post_init__(self) -> None:
        levels = len(self.widths) - 1
        if levels < 1 or len(self.enc) != levels - 1 or len(self.dec) != levels:
            raise ValueError(f"inconsistent architecture {self}: widths need levels+1, enc levels-1, dec levels entries")

    @property
    def levels(self) -> int:
        return len(self.widths) - 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Arch:
        """From ``asdict`` (tuples come back as lists), or a first-generation ``c1/c2/n_mid`` dict."""
        if "widths" not in d:
            return cls.from_v1(**d)
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise TypeError(f"unknown architecture fields {sorted(extra)}")
        fields_: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fields_)

    @classmethod
    def from_v1(cls, c1: int, c2: int, n_mid: int, c0: int = 8, half_conv: bool = False, half_depth: int = 1,
                full_depth: int = 0) -> Arch:
        """The first networks' fields: c1 at 1/2, c2 at 1/4, n_mid convs at 1/4, c0 at full resolution."""
        return cls(widths=(c0, c1, c2), enc=(half_depth if half_conv else 0,), mid=n_mid, dec=(full_depth, half_depth))


V1_RENAMES = {"down1.": "downs.0.", "enc1.": "encs.0.", "down2.": "downs.1.", "up2.": "ups.1.", "dec1.": "decs.1.",
              "up1.": "ups.0.", "full.": "decs.0."}


def from_v1_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A first-generation state dict (down1/enc1/.../full) under this module's names."""
    out = {}
    for k, v in state.items():
        for old, new in V1_RENAMES.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


ARCHS: dict[str, Arch] = {
    # real time on 2 CPU cores at 640x360 (~4.3 k MAC/pixel)
    "lite": Arch(widths=(8, 16, 48), enc=(0,), mid=2, dec=(0, 1), noise_planes=2),
    # for GPUs: three levels (stride 8), a full-resolution stem, ~1.2 M params, ~72 k MAC/pixel
    "base": Arch(widths=(32, 64, 96, 128), enc=(1, 2), mid=4, dec=(1, 1, 2), stem=True, noise_planes=2),
}


def _convs(c: int, n: int) -> nn.Module:
    return nn.Sequential(*[m for _ in range(n) for m in (nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True))]) \
        if n else nn.Identity()


class VideoDenoiser(nn.Module):
    def __init__(self, arch: Arch, frames: int = 5, target: int | None = None, curve: MapCurve | None = None) -> None:
        super().__init__()
        self.arch, self.frames = arch, frames
        self.target = frames // 2 if target is None else target
        if not 0 <= self.target < frames:
            raise ValueError(f"target {self.target} outside window of {frames}")
        self.block = 3 + arch.noise_planes  # channels per frame
        self.in_channels = frames * self.block
        self.stride = 2 ** arch.levels
        w, relu = arch.widths, nn.ReLU(inplace=True)
        self.stem = nn.Sequential(nn.Conv2d(self.in_channels, w[0], 3, padding=1), relu) if arch.stem else nn.Identity()
        first = w[0] if arch.stem else self.in_channels
        self.downs = nn.ModuleList(nn.Sequential(nn.Conv2d(first if l == 0 else w[l], w[l + 1], 2, 2), relu)
                                   for l in range(arch.levels))
        self.encs = nn.ModuleList(_convs(w[l + 1], n) for l, n in enumerate(arch.enc))
        self.mid = _convs(w[-1], arch.mid)
        self.ups = nn.ModuleList(nn.Sequential(nn.ConvTranspose2d(w[l + 1], w[l], 2, 2), relu) for l in range(arch.levels))
        self.decs = nn.ModuleList(_convs(w[l], n) for l, n in enumerate(arch.dec))
        self.out = nn.Conv2d(w[0] + 3, 3, 3, padding=1)
        self.set_curve(curve)

    def set_curve(self, curve: MapCurve | None) -> None:
        """Give the network a ``noise_level.MapCurve`` (None or a zero slope: none). Not part of the
        weights or the graph: the model file's config carries it into the input contract (``layout``),
        whose maps every runtime reads through it."""
        if curve is not None and not self.arch.noise_planes:
            raise ValueError("a map curve needs a noise-aware network")
        self.map_curve = curve if curve is not None and curve.slope else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.block * self.target
        centre = x[:, c : c + 3]
        h = self.stem(x)
        skips = [h] if self.arch.stem else []
        for l, down in enumerate(self.downs):
            h = down(h)
            if l < len(self.encs):
                h = self.encs[l](h)
                skips.append(h)
        h = self.mid(h) + h
        for l in reversed(range(self.arch.levels)):
            h = self.ups[l](h)
            if l > 0 or self.arch.stem:
                h = h + skips[l if self.arch.stem else l - 1]
            h = self.decs[l](h)
        return self.out(torch.cat([h, centre], dim=1)) + centre

    @property
    def layout(self) -> Layout:
        """The input contract (``planes.Layout``) of this network."""
        return Layout(self.frames, self.target, self.stride, self.arch.noise_planes, self.map_curve)

    def config(self) -> dict:
        cfg = {"arch": asdict(self.arch), "frames": self.frames, "target": self.target}
        return cfg | ({"map_curve": asdict(self.map_curve)} if self.map_curve is not None else {})

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_pixel(self) -> float:
        """Multiply-accumulates per output pixel: each convolution's weights times the fraction of
        full-resolution pixels it runs at (a transposed convolution's: the pixels it reads)."""
        total = 0.0
        scales = [("stem", 1.0), ("out", 1.0)]
        scales += [(f"downs.{l}", 4.0 ** -(l + 1)) for l in range(self.arch.levels)]
        scales += [(f"encs.{l}", 4.0 ** -(l + 1)) for l in range(len(self.encs))]
        scales += [("mid", 4.0 ** -self.arch.levels)]
        scales += [(f"ups.{l}", 4.0 ** -(l + 1)) for l in range(self.arch.levels)]
        scales += [(f"decs.{l}", 4.0 ** -l) for l in range(self.arch.levels)]
        for name, s in scales:
            for m in self.get_submodule(name).modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    total += m.weight.numel() * s
        return total


def create_model(name: str = "lite", frames: int = 5, window: str = "centered") -> VideoDenoiser:
    """A fresh network. name: one of ARCHS; window: centered (target K//2) or causal (target K-1)."""
    if name not in ARCHS:
        raise ConfigError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHS)}")
    if window not in ("centered", "causal"):
        raise ConfigError(f"unknown window {window!r}; choose centered or causal")
    return VideoDenoiser(ARCHS[name], frames, frames // 2 if window == "centered" else frames - 1)
