"""The blind spot of self-supervised training, proved with gradients: the output at a masked pixel
does not depend on that pixel's noisy value (nor its block's, nor — with tube — any frame's)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stream_denoise.model import create_model  # noqa: E402
from stream_denoise.train.masking import MaskSpec, apply_mask, mask_positions, masked_loss  # noqa: E402


@pytest.mark.parametrize("window", ["centered", "causal"])
@pytest.mark.parametrize("spec", [MaskSpec(0), MaskSpec(1), MaskSpec(2, tube=True)])
def test_masked_pixel_is_invisible_to_its_output(window, spec):
    torch.manual_seed(0)
    model = create_model("lite", window=window).eval()
    rng = np.random.default_rng(0)
    x = torch.rand(2, model.in_channels, 48, 48, requires_grad=True)  # K frame blocks: RGB + noise maps
    pos = mask_positions(2, 48, 48, spec, rng)
    assert len(pos[0]) > 10
    y = model(apply_mask(x, pos, spec, model.layout.block, model.target, rng))
    b, py, px = (int(a[len(a) // 2]) for a in pos)
    y[b, :, py, px].sum().backward()
    g = x.grad[b]
    r, t, c = spec.radius, model.target, model.layout.block
    block = (slice(py - r, py + r + 1), slice(px - r, px + r + 1))
    assert torch.all(g[c * t : c * t + c, block[0], block[1]] == 0)  # its RGB and its noise maps
    if spec.tube:
        assert torch.all(g[:, block[0], block[1]] == 0)
    else:  # the neighbouring frames are seen in full, at the very same pixel too
        other = 0 if t != 0 else c
        assert g[other : other + 3, py, px].abs().sum() > 0
    # the output does use the target frame's context around the block
    assert g[c * t : c * t + 3].abs().sum() > 0


def test_unmasked_network_sees_the_pixel():
    """Control: without the mask the same gradient is non-zero, so the test above can fail."""
    model = create_model("lite").eval()
    x = torch.rand(1, model.in_channels, 32, 32, requires_grad=True)
    model(x)[0, :, 16, 16].sum().backward()
    c = model.layout.block * model.target
    assert x.grad[0, c : c + 3, 16, 16].abs().sum() > 0


def test_masked_loss_is_finite_and_differentiable():
    model = create_model("lite")
    x = torch.rand(4, model.in_channels, 64, 64)
    loss = masked_loss(model, x, MaskSpec(1), np.random.default_rng(0))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
