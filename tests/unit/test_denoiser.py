"""The Denoiser's windows: views of its plane slab in a stream's steady state, copies at the edges,
the same pixels either way (real ONNX Runtime sessions, the shipped lite model)."""

from __future__ import annotations

import numpy as np
import pytest

from stream_denoise.backends.onnx_cpu import OnnxRuntimeBackend
from stream_denoise.model_files import onnx_file
from stream_denoise.buffer import TemporalBuffer
from stream_denoise.denoiser import Denoiser, PlaneSlab
from stream_denoise.planes import to_uint8_rgb
from stream_denoise.frame import Frame


@pytest.fixture(scope="module")
def backend():
    b = OnnxRuntimeBackend(onnx_file("lite"), threads=2, lanes=2)
    yield b
    b.close()


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The lite network without noise maps (seeded random weights): a pushed stream reads its noise as
    frames arrive, a window denoised alone or windows run straight through ``_run`` cannot share those
    readings, so the paths are compared, frame for frame, on a network that reads none."""
    import dataclasses

    import torch

    from stream_denoise.export.to_onnx import export_onnx
    from stream_denoise.model import save_model
    from stream_denoise.model.net import ARCHS, VideoDenoiser

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("plain")
    pt = save_model(VideoDenoiser(dataclasses.replace(ARCHS["lite"], noise_planes=0), 5, 2), d / "plain.pt")
    b = OnnxRuntimeBackend(export_onnx(pt, d / "plain.onnx"), threads=2, lanes=2)
    assert b.noise_planes == 0
    yield b
    b.close()


def stream(rng: np.random.Generator) -> list[Frame]:
    """Two segments of one camera with a dropped frame, then a new frame size; odd sizes (padding)."""
    out = []
    for seg, (n, h, w) in enumerate([(24, 46, 70), (6, 46, 70), (9, 38, 52)]):
        idx = [i for i in range(n + 1) if i != 7]  # index 7 was dropped
        out += [Frame(rng.integers(0, 256, (h, w, 3), np.uint8), i, None, 0.0, "cam", seg) for i in idx]
    return out


def reference(den: Denoiser, frames: list[Frame]) -> list[np.ndarray]:
    """Each output frame denoised from its window copied together, one at a time."""
    buf = TemporalBuffer(den.backend.frames, den.backend.target)
    windows = [w for f in frames for w in buf.push(f)] + buf.flush()
    return [den.denoise_window([f.pixels for f in w]) for _, w in windows]


def test_pushed_frames_equal_windows_copied_together(plain):
    backend = plain
    frames = stream(np.random.default_rng(0))
    den = Denoiser(backend)
    got = [f for fr in frames for f in den.push(fr)] + den.flush()
    steady = den.assembled
    want = reference(Denoiser(backend), frames)
    assert [g.index for g in got] == [f.index for f in frames]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert np.array_equal(g.pixels, w)
    # edge windows (2 at each end of 3 segments, all reflected) are copied; the rest are views
    assert steady == 3 * 4, steady


def test_a_small_slab_gives_the_same_frames(plain):
    """The multi-process runtime's lanes use a slab of K + 3 blocks (memory per camera): same output,
    still views of the slab away from the stream's edges."""
    frames = stream(np.random.default_rng(2))
    big = Denoiser(plain)
    want = [f for fr in frames for f in big.push(fr)] + big.flush()
    small = Denoiser(plain, slab_frames=plain.frames + 3)
    got = [f for fr in frames for f in small.push(fr)] + small.flush()
    assert small._slab.capacity == plain.frames + 3
    assert [(g.segment, g.index) for g in got] == [(w.segment, w.index) for w in want]
    assert all(np.array_equal(g.pixels, w.pixels) for g, w in zip(got, want))
    assert small.assembled == big.assembled == 3 * 4  # only the edge windows are copied together


def test_batches_of_views_equal_one_by_one(backend):
    frames = stream(np.random.default_rng(1))
    one = Denoiser(backend)
    want = [f for fr in frames for f in one.push(fr)] + one.flush()
    den = Denoiser(backend)
    got = []
    for i in range(0, len(frames), 3):  # batches of 3 windows: the lanes run views of the slab
        got += den.push_many(frames[i : i + 3])
    got += den.flush()
    assert den.times.calls < len(frames)
    assert [(g.segment, g.index) for g in got] == [(w.segment, w.index) for w in want]
    for g, w in zip(got, want):
        assert np.abs(g.pixels.astype(int) - w.pixels).max() <= 1  # one-thread lanes vs the two-thread session


def test_interleaved_cameras_are_assembled_and_stay_apart(plain):
    backend = plain
    rng = np.random.default_rng(2)
    a = [Frame(rng.integers(0, 256, (40, 64, 3), np.uint8), i, None, 0.0, "a") for i in range(8)]
    b = [Frame(rng.integers(0, 256, (40, 64, 3), np.uint8), i, None, 0.0, "b") for i in range(8)]
    den_a, den_b = Denoiser(backend), Denoiser(backend)
    want = {"a": [f.pixels for fr in a for f in den_a.push(fr)] + [f.pixels for f in den_a.flush()],
            "b": [f.pixels for fr in b for f in den_b.push(fr)] + [f.pixels for f in den_b.flush()]}
    # one slab fed by two cameras in turn: windows never mix them (a buffer per camera)
    shared = Denoiser(backend)
    bufs = {"a": TemporalBuffer(backend.frames, backend.target), "b": TemporalBuffer(backend.frames, backend.target)}
    got: dict[str, list[np.ndarray]] = {"a": [], "b": []}
    for fa, fb in zip(a, b):
        ready = bufs["a"].push(fa) + bufs["b"].push(fb)
        for (o, _), img in zip(ready, [f.pixels for f in shared._run(ready)]):
            got[o.source].append(img)
    for k in "ab":
        ready = bufs[k].flush()
        got[k] += [f.pixels for f in shared._run(ready)]
        assert len(got[k]) == len(want[k]) == 8
        for g, w in zip(got[k], want[k]):
            assert np.abs(g.astype(int) - w).max() <= 1


def test_slab_keeps_what_the_windows_need_when_it_wraps():
    slab = PlaneSlab(6)
    frames = [Frame(np.full((4, 4, 3), i, np.uint8), i, None, 0.0, "s") for i in range(40)]

    def fill(f: Frame, out: np.ndarray) -> None:
        out[:] = f.index

    for t in range(4, 40):
        window = frames[t - 4 : t + 1]
        slab.hold(window, (3, 4, 4), fill)  # blocks of (C, Hp, Wp): RGB here
        start = slab.start([(f.source, f.segment, f.index) for f in window])
        assert start is not None
        view = slab.windows(start, 1, 5)[0]
        assert view.flags.c_contiguous
        assert [int(view[3 * k, 0, 0]) for k in range(5)] == list(range(t - 4, t + 1))


def test_output_rounding_matches_the_rule():
    rng = np.random.default_rng(3)
    y = (rng.random((3, 9, 11)) * 1.4 - 0.2).astype(np.float32)
    want = np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    got = to_uint8_rgb(y.copy())
    assert got.shape == (9, 11, 3) and got.flags.c_contiguous
    assert np.array_equal(got, want)


def test_strength_scales_the_reading_and_how_hard_the_network_denoises(backend):
    """``strength`` multiplies the noise reading the network is told (the shipped lite, real sessions):
    above 1 it removes more of the noise, below 1 it keeps more; 1 is the default's output exactly."""
    rng = np.random.default_rng(3)
    clean = np.tile(np.linspace(40, 200, 96, dtype=np.float32), (64, 1))[..., None].repeat(3, axis=2)
    frames = [Frame(np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8), i, None, 0.0, "cam")
              for i in range(9)]

    def run(strength: float) -> tuple[np.ndarray, Denoiser]:
        den = Denoiser(backend, strength=strength)
        out = [f.pixels for fr in frames for f in den.push(fr)] + [f.pixels for f in den.flush()]
        return np.stack(out).astype(np.float32), den

    default, d1 = run(1.0)
    same, _ = run(1.0)
    assert np.array_equal(default, same)
    weak, d_weak = run(0.5)
    strong, d_strong = run(2.0)
    measured = d1.noise.sigmas if d1.noise is not None else None
    assert measured is not None and measured.max() > 5
    np.testing.assert_allclose(d_strong._readings[("cam", 0, 8)], 2 * measured, rtol=1e-6)
    np.testing.assert_allclose(d_weak._readings[("cam", 0, 8)], 0.5 * measured, rtol=1e-6)

    def residual_noise(out: np.ndarray) -> float:  # the ramp is constant down each column: what varies there is noise
        return float(out.std(axis=1).mean())

    assert residual_noise(strong) < residual_noise(default) < residual_noise(weak)


def test_strength_needs_a_noise_aware_model(plain):
    from stream_denoise.errors import ConfigError

    with pytest.raises(ConfigError, match="noise-aware"):
        Denoiser(plain, strength=1.5)
    Denoiser(plain, strength=1.0)  # the default asks nothing of the model
