"""A small multi-frame U-Net that denoises the centre (or last) frame of a K-frame window.

Input ``x``: (N, 3*K, H, W) float32 in [0, 1], frames oldest -> newest, each RGB; H and W multiples
of ``STRIDE``. Output: (N, 3, H, W), the clean estimate of frame ``target`` (K//2 for a centered
window, K-1 for a causal one).

The graph is export-friendly by construction: Conv, ConvTranspose (k2 s2), ReLU, Add, Concat and one
Slice — no Python branches on shapes, no crops, nothing TensorRT or ONNX Runtime lacks natively.

The blind spot that self-supervised training needs is made by masking (see ``train.masking``): the
masked pixels of the target frame (and, for temporally correlated noise, of every frame) are
replaced before the forward pass and the loss is taken only there, so the output at a masked
pixel is a function of inputs that exclude that pixel's noisy value (proved by a gradient test).
At inference nothing is masked: the network sees every pixel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

STRIDE = 4


@dataclass(frozen=True)
class Arch:
    """Widths: c1 at 1/2 resolution, c2 at 1/4; n_mid 3x3 convs at 1/4; c0 channels at full res.

    half_depth: 3x3 convs at 1/2 resolution on the way up (and on the way down with half_conv);
    full_depth: 3x3 convs on the c0 features at full resolution before the output conv.
    """

    c1: int
    c2: int
    n_mid: int
    c0: int = 8
    half_conv: bool = False  # 3x3 convs at 1/2 resolution on the way down too
    half_depth: int = 1
    full_depth: int = 0


ARCHS: dict[str, Arch] = {
    "lite": Arch(c1=16, c2=48, n_mid=2, c0=8, half_conv=False),
    # for GPUs (~1 M params, ~110 k MAC/pixel); trained on a GPU (scripts/train_models.sh)
    "base": Arch(c1=64, c2=128, n_mid=6, c0=32, half_conv=True, half_depth=2, full_depth=1),
}


class VideoDenoiser(nn.Module):
    def __init__(self, arch: Arch, frames: int = 5, target: int | None = None) -> None:
        super().__init__()
        self.arch, self.frames = arch, frames
        self.target = frames // 2 if target is None else target
        if not 0 <= self.target < frames:
            raise ValueError(f"target {self.target} outside window of {frames}")
        c0, c1, c2 = arch.c0, arch.c1, arch.c2
        relu = nn.ReLU(inplace=True)

        def convs(c: int, n: int) -> nn.Module:
            return nn.Sequential(*[m for _ in range(n) for m in (nn.Conv2d(c, c, 3, padding=1), relu)]) if n else nn.Identity()

        self.down1 = nn.Sequential(nn.Conv2d(3 * frames, c1, 2, 2), relu)
        self.enc1 = convs(c1, arch.half_depth if arch.half_conv else 0)
        self.down2 = nn.Sequential(nn.Conv2d(c1, c2, 2, 2), relu)
        self.mid = convs(c2, arch.n_mid)
        self.up2 = nn.Sequential(nn.ConvTranspose2d(c2, c1, 2, 2), relu)
        self.dec1 = convs(c1, arch.half_depth)
        self.up1 = nn.Sequential(nn.ConvTranspose2d(c1, c0, 2, 2), relu)
        self.full = convs(c0, arch.full_depth)
        self.out = nn.Conv2d(c0 + 3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.target
        centre = x[:, 3 * t : 3 * t + 3]
        e1 = self.enc1(self.down1(x))
        e2 = self.down2(e1)
        m = self.mid(e2) + e2
        d1 = self.dec1(self.up2(m) + e1)
        return self.out(torch.cat([self.full(self.up1(d1)), centre], dim=1)) + centre

    def config(self) -> dict:
        return {"arch": asdict(self.arch), "frames": self.frames, "target": self.target}

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_pixel(self) -> float:
        """Multiply-accumulates per output pixel (conv/convT weights x their resolution factor)."""
        total = 0.0
        for mod, s in ((self.down1, 0.25), (self.enc1, 0.25), (self.down2, 1 / 16), (self.mid, 1 / 16),
                       (self.up2, 1 / 16), (self.dec1, 0.25), (self.up1, 0.25), (self.full, 1.0), (self.out, 1.0)):
            for m in mod.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    total += m.weight.numel() * s
        return total


def create_model(name: str = "lite", frames: int = 5, window: str = "centered") -> VideoDenoiser:
    """A fresh network. name: one of ARCHS; window: centered (target K//2) or causal (target K-1)."""
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHS)}")
    if window not in ("centered", "causal"):
        raise ValueError(f"unknown window {window!r}; choose centered or causal")
    return VideoDenoiser(ARCHS[name], frames, frames // 2 if window == "centered" else frames - 1)
