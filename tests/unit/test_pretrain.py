"""Pre-training of the shipped models: the noise pool, the on-device window sampler, a tiny run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stream_denoise.model import create_model, load_model  # noqa: E402
from stream_denoise.model.net import Arch, VideoDenoiser  # noqa: E402
from stream_denoise.train import pretrain  # noqa: E402


def clean_clips() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (7, 40, 48, 3), dtype=np.uint8), rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)]


def test_pool_is_the_same_whatever_the_workers():
    clips = clean_clips()
    one = pretrain.build_pool(clips, 3, seed=5, workers=1)
    two = pretrain.build_pool(clips, 3, seed=5, workers=2)
    assert len(one[1]) == 6 and list(one[2]) == [0, 1, 0, 1, 0, 1]
    for a, b, i in zip(one[1], two[1], one[2], strict=True):
        assert a.shape == clips[i].shape and a.dtype == np.uint8
        assert np.array_equal(a, b)
    assert not np.array_equal(one[1][0], one[1][2])  # variants differ
    other = pretrain.build_pool(clips, 1, seed=6)
    assert not np.array_equal(one[1][0], other[1][0])


def test_pool_file_round_trip(tmp_path: Path):
    pool = pretrain.build_pool(clean_clips(), 2, seed=0)
    pretrain.save_pool(pool, tmp_path / "pool.npz")
    clean, noisy, index = pretrain.load_pool(tmp_path / "pool.npz")
    assert list(index) == list(pool[2])
    assert all(np.array_equal(a, b) for a, b in zip(clean + noisy, pool[0] + pool[1], strict=True))


@pytest.mark.parametrize("target", [2, 4])
def test_sampler_cuts_the_window_and_its_clean_target(target: int):
    """Each sample is K noisy frames around t (reflected, never repeating t) and the clean frame t,
    cut at the same place and turned the same way."""
    t_len, h, w = 6, 24, 28
    clean = np.arange(t_len * h * w * 3, dtype=np.int64).reshape(t_len, h, w, 3) % 251
    clean = clean.astype(np.uint8)
    noisy = (clean.astype(np.int64) + 1).astype(np.uint8)  # "noise": +1, so the frames stay identifiable
    sampler = pretrain.WindowSampler(([clean], [noisy], np.array([0])), torch.device("cpu"))
    x, c = sampler.sample(16, 5, target, 8, np.random.default_rng(0))
    assert x.shape == (16, 15, 8, 8) and c.shape == (16, 3, 8, 8)
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    x8 = (x * 255).round().to(torch.int64).numpy()
    c8 = (c * 255).round().to(torch.int64).numpy()
    for xi, ci in zip(x8, c8, strict=True):
        centre = xi[3 * target : 3 * target + 3]
        assert np.array_equal(centre, (ci + 1) % 256)  # the target frame's noisy copy is the input's target
        frames = [xi[3 * k : 3 * k + 3] for k in range(5)]
        assert sum(np.array_equal(f, centre) for f in frames) == 1  # no other slot repeats frame t


def test_tiny_pretrain_writes_a_loadable_model_file(tmp_path: Path):
    pool = pretrain.build_pool(clean_clips(), 1, seed=0)
    out = tmp_path / "tiny.pt"
    summary = pretrain.pretrain("lite", "causal", steps=3, minutes=1, out=out, batch=2, patch=16, pool=pool,
                                device="cpu", progress=False)
    assert summary["steps"] == 3 and summary["skipped_steps"] == 0
    model = load_model(out)
    assert model.target == 4 and model.meta["trained"] == "supervised synthetic" and model.meta["steps"] == 3


def test_pretrain_continues_from_a_model_file(tmp_path: Path):
    """--init starts from the file's weights (not a fresh network), records where it came from, and
    refuses a file of another architecture or window."""
    pool = pretrain.build_pool(clean_clips(), 1, seed=0)
    first = tmp_path / "first.pt"
    pretrain.pretrain("lite", "causal", steps=2, minutes=1, out=first, batch=2, patch=16, pool=pool,
                      device="cpu", progress=False)
    again = tmp_path / "again.pt"
    pretrain.pretrain("lite", "causal", steps=1, minutes=1, out=again, batch=2, patch=16, pool=pool,
                      device="cpu", progress=False, lr=0.0, init=first)
    a, b = load_model(first).state_dict(), load_model(again).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # lr 0: the weights it started from, unchanged
    meta = load_model(again).meta
    assert meta["continued_from"] == str(first) and meta["earlier"]["steps"] == 2 and meta["steps"] == 1
    with pytest.raises(ValueError, match="lite/causal, not lite/centered"):
        pretrain.pretrain("lite", "centered", steps=1, minutes=1, out=tmp_path / "x.pt", batch=2, patch=16,
                          pool=pool, device="cpu", progress=False, init=first)


def test_older_model_files_keep_their_layers():
    """Architectures saved before half_depth/full_depth existed load with one conv at 1/2 and none
    at full resolution, i.e. the layers they were trained with."""
    old = VideoDenoiser(Arch(c1=32, c2=64, n_mid=4, c0=16, half_conv=True))
    keys = set(old.state_dict())
    assert {"enc1.0.weight", "dec1.0.weight"} <= keys and not any(k.startswith(("full.", "enc1.2", "dec1.2")) for k in keys)
    base = create_model("base")
    assert any(k.startswith("full.0") for k in base.state_dict()) and "dec1.2.weight" in base.state_dict()
    assert base.macs_per_pixel() > 20 * create_model("lite").macs_per_pixel()


def test_device_sampler_cuts_the_same_windows_as_the_numpy_one():
    """pretrain.WindowSampler (tensors on the training device) and data.sample_windows (NumPy, used by
    fine-tuning) draw through data.draw_cut: the same seed gives the same windows and targets."""
    from stream_denoise.train.data import Pair, sample_windows

    r = np.random.default_rng(0)
    clean = [r.integers(0, 256, (9, 40, 50, 3), dtype=np.uint8) for _ in range(2)]
    noisy = [r.integers(0, 256, c.shape, dtype=np.uint8) for c in clean]
    sampler = pretrain.WindowSampler((clean, noisy, np.arange(2)), torch.device("cpu"))
    for target in (2, 4):  # centered (time reversal drawn) and causal
        x, c = sampler.sample(16, 5, target, 24, np.random.default_rng(7))
        xn, cn, _ = sample_windows([Pair(n, c_) for n, c_ in zip(noisy, clean)], 16, 5, target, 24,
                                   np.random.default_rng(7))
        assert np.array_equal(x.numpy(), xn.transpose(0, 1, 4, 2, 3).reshape(16, 15, 24, 24) / np.float32(255))
        assert np.array_equal(c.numpy(), cn.transpose(0, 3, 1, 2) / np.float32(255))
