"""The same network, rearranged for GPU tensor cores (the same function with the same weights; in
fp16 the fused form rounds once where PyTorch rounds the convolution and its bias separately).

cuDNN's fp16 tensor-core kernels for channels-last tensors want channel counts that are multiples of
8. ``VideoDenoiser`` has two that are not: its input (K frame blocks: 15 channels, 25 with noise
maps) and its output convolution (c0 + 3 channels in, 3 out, at full resolution). :class:`GpuForm`
pads both with zero weights:

* the input is given ``in_channels`` (16, 32) channels, the extra ones zero (the GPU executor
  allocates its static input that wide and never writes them);
* the output convolution reads the full-resolution features and the whole input (the centre
  frame's weights in their slots, zeros elsewhere) and writes 8 channels of which the first 3 are
  the image; the residual ``+ centre`` stays an addition (folded into the weights it would pass
  the frame through TF32 products, a level off on ~2 % of pixels in fp32).

``shuffle=True`` also turns each 2x2 stride-2 transposed convolution into a 1x1 convolution to 4x
the channels followed by a pixel shuffle (depth-to-space), the same arithmetic. ``fuse=True`` runs
each convolution followed by a ReLU as one cuDNN call with bias and ReLU in its epilogue
(``torch.cudnn_convolution_relu``): PyTorch otherwise adds the bias and applies the ReLU in two
more passes over every feature map, which the profiler puts at ~45 % of ``base``'s GPU time.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from .net import VideoDenoiser

ALIGN = 8


def _ceil(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


class _ShuffleUp(nn.Module):
    """ConvTranspose2d(ci, co, 2, stride 2) as Conv2d(ci, 4co, 1) + PixelShuffle(2)."""

    def __init__(self, convt: nn.ConvTranspose2d) -> None:
        super().__init__()
        ci, co = convt.in_channels, convt.out_channels
        self.conv = nn.Conv2d(ci, 4 * co, 1)
        with torch.no_grad():  # out[o, 2y+a, 2x+b] = sum_i in[i, y, x] W[i, o, a, b]; shuffle: channel o*4 + a*2 + b
            self.conv.weight.copy_(convt.weight.permute(1, 2, 3, 0).reshape(4 * co, ci, 1, 1))
            assert self.conv.bias is not None and convt.bias is not None  # both built with a bias
            self.conv.bias.copy_(convt.bias.repeat_interleave(4))
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class _ConvReLU(nn.Module):
    """relu(conv(x) + bias) in one cuDNN call on a GPU (the same two modules' arithmetic elsewhere)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if x.is_cuda and torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled:
            padding = cast(tuple[int, ...], c.padding)  # numeric: the network never pads by name
            return torch.cudnn_convolution_relu(x, c.weight, c.bias, c.stride, padding, c.dilation, c.groups)
        return torch.relu(c(x))


def _fused(seq: nn.Module) -> nn.Module:
    """A Sequential of Conv2d/ReLU pairs (or Identity) with each pair as one _ConvReLU."""
    if not isinstance(seq, nn.Sequential):
        return seq
    mods, out = list(seq), cast(list[nn.Module], [])
    i = 0
    while i < len(mods):
        if isinstance(mods[i], nn.Conv2d) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU):
            out.append(_ConvReLU(cast(nn.Conv2d, mods[i])))
            i += 2
        else:
            out.append(mods[i])
            i += 1
    return nn.Sequential(*out)


class GpuForm(nn.Module):
    def __init__(self, model: VideoDenoiser, shuffle: bool = False, fuse: bool = False) -> None:
        super().__init__()
        self.frames, self.target, self.arch = model.frames, model.target, model.arch
        c_in = model.in_channels
        self.in_channels = _ceil(c_in)
        first = cast(nn.Conv2d, model.stem[0] if model.arch.stem else model.downs[0][0])  # type: ignore[index]
        k, s, p = (cast(tuple[int, int], v) for v in (first.kernel_size, first.stride, first.padding))
        wide = nn.Conv2d(self.in_channels, first.out_channels, k, s, p)
        with torch.no_grad():
            wide.weight.zero_()
            wide.weight[:, :c_in].copy_(first.weight)
            assert wide.bias is not None and first.bias is not None
            wide.bias.copy_(first.bias)
        relu = nn.ReLU(inplace=True)
        if model.arch.stem:
            self.stem: nn.Module = nn.Sequential(wide, relu)
            self.downs = model.downs
        else:
            self.stem = nn.Identity()
            self.downs = nn.ModuleList([nn.Sequential(wide, relu), *list(model.downs)[1:]])
        self.encs, self.mid, self.decs = model.encs, model.mid, model.decs
        up = (lambda s: nn.Sequential(_ShuffleUp(s[0]), s[1])) if shuffle else (lambda s: s)
        self.ups = nn.ModuleList(up(u) for u in model.ups)
        c0 = model.out.in_channels - 3
        self.out = nn.Conv2d(c0 + self.in_channels, ALIGN, 3, padding=1)
        t = model.layout.block * model.target
        with torch.no_grad():
            w = torch.zeros_like(self.out.weight)
            w[:3, :c0] = model.out.weight[:, :c0]
            w[:3, c0 + t : c0 + t + 3] = model.out.weight[:, c0:]
            self.out.weight.copy_(w)
            assert self.out.bias is not None and model.out.bias is not None
            self.out.bias.zero_()
            self.out.bias[:3].copy_(model.out.bias)
        self.centre = slice(t, t + 3)
        if fuse:
            self.stem, self.mid = _fused(self.stem), _fused(self.mid)
            for name in ("downs", "encs", "decs"):
                setattr(self, name, nn.ModuleList(_fused(m) for m in getattr(self, name)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in_channels, H, W), channels past the network's zero -> (N, 3, H, W); the same
        function as ``VideoDenoiser.forward``."""
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
        return self.out(torch.cat([h, x], dim=1))[:, :3] + x[:, self.centre]
