"""ONNX Runtime lanes: a batch split over one-thread sessions, and a large frame split into bands,
give the same output as one session on the whole input (no seams)."""

import numpy as np
import pytest

from stream_denoise.backends.onnx_cpu import OnnxRuntimeBackend
from stream_denoise.model_files import onnx_file
from stream_denoise.planes import Layout


def frames(n: int, h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """n windows of c channels (the network's input width: K * (3 + noise maps))."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, (1, c, h, w)).astype(np.float32)
    return np.clip(base + rng.normal(0, 0.05, (n, c, h, w)), 0, 1).astype(np.float32)


def width(b: OnnxRuntimeBackend) -> int:
    return Layout.of(b).channels


@pytest.mark.parametrize("model", ["lite", "base"])
def test_lanes_and_bands_equal_one_session(model):
    path = onnx_file(model)
    one = OnnxRuntimeBackend(path, threads=2, lanes=1)
    lanes = OnnxRuntimeBackend(path, threads=2, lanes=3, tile_pixels=1)  # every lone frame in bands
    assert lanes.lanes == 3 and len(lanes._lanes) == 3
    try:
        x = frames(4, 200, 96, width(one))  # a batch of 4 windows over 3 lanes
        ref = np.concatenate([one.infer(x[i : i + 1]).copy() for i in range(4)])
        assert np.abs(lanes.infer(x) - ref).max() < 1e-4
        big = frames(1, 416, 120, width(one), seed=1)  # 3 bands of ~139 rows, cut on the stride grid (4 and 8)
        whole = one.infer(big).copy()
        banded = lanes.infer(big)
        assert np.abs(banded - whole).max() < 1e-4, "seams: the bands' margins are narrower than the receptive field"
    finally:
        one.close()
        lanes.close()


def test_band_margin_covers_the_receptive_field():
    """A pixel change moves the output no further than the band margin away (lite and base)."""
    from stream_denoise.backends.onnx_cpu import band_margin

    for model in ("lite", "base"):
        b = OnnxRuntimeBackend(onnx_file(model), threads=2, lanes=1)
        try:
            x = frames(1, 256, 64, width(b))
            y0 = b.infer(x).copy()
            x[:, :, 128, 32] += 0.5
            rows = np.nonzero(np.abs(b.infer(x) - y0).max(axis=(0, 1, 3)) > 0)[0]
            assert rows.size and max(abs(rows - 128)) < band_margin(b.stride), (model, rows.min(), rows.max())
        finally:
            b.close()
