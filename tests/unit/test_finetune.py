"""Self-supervised fine-tuning learns to denoise from noisy frames alone, and writes a usable model."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stream_denoise.config import ModelConfig  # noqa: E402
from stream_denoise.backends import create_backend  # noqa: E402
from stream_denoise.denoiser import Denoiser  # noqa: E402
from stream_denoise.noise import CONDITIONS, add_noise  # noqa: E402
from tests.photo_clips import moving_clip, skimage_photos  # noqa: E402
from stream_denoise.train.finetune import FineTune, fine_tune  # noqa: E402
from stream_denoise.train.masking import NoiseStats, measure_noise  # noqa: E402
from tests.cli_helpers import denoise_cli, run_cli  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(0)
    clean = moving_clip(skimage_photos()[1], 24, 96, rng)
    return clean, add_noise(clean, CONDITIONS["gaussian30"], seed=3)


def test_from_scratch_without_clean_data_beats_the_noisy_input(tmp_path, clip):
    clean, noisy = clip
    out = tmp_path / "cam.pt"
    summary = fine_tune([noisy], out, FineTune(init=None, arch="lite", minutes=3, steps=400, seed=0, batch=8, patch=48,
                                               lr=5e-3, progress=False))
    assert out.exists() and summary["steps"] > 0 and summary["best_val"] is not None
    den = Denoiser(create_backend(ModelConfig(model=str(out), backend="torch")))
    outs = [den.denoise_window(list(noisy[i - 2 : i + 3])) for i in range(2, len(noisy) - 2)]
    before = np.mean([psnr(noisy[i], clean[i]) for i in range(2, len(noisy) - 2)])
    after = np.mean([psnr(o, clean[i + 2]) for i, o in enumerate(outs)])
    assert after > before + 2.0, (before, after)


def test_checkpoint_resume_continues(tmp_path, clip):
    _, noisy = clip
    out = tmp_path / "cam.pt"
    fine_tune([noisy], out, FineTune(init=None, minutes=1, steps=10, progress=False, patch=32, batch=2))
    again = fine_tune([noisy], out, FineTune(init=None, minutes=1, steps=20, progress=False, patch=32, batch=2))
    assert again["steps"] == 20  # resumed at step 10 from cam.ckpt, not restarted


def test_a_run_the_clock_stops_still_anneals_and_keeps_its_best_weights():
    from stream_denoise.train.loop import fit

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.rand(4, 3, 16, 16)
    seen: list[float] = []

    def validate() -> float:
        with torch.no_grad():
            seen.append(float(((model(x) - x) ** 2).mean()))
        return seen[-1]

    s = fit(model, lambda r: ((model(x) - x) ** 2).mean(), steps=10**7, minutes=1 / 60, lr=1e-2,
            validate=validate, validate_every=10**6, progress=False)
    assert 1 < s["steps"] < 10**7  # the clock ended it
    assert s["lr_end"] < 1e-2 * 0.01  # ...at the end of the cosine, not at the start of a 10**7-step one
    assert len(seen) == 2 and s["best_val"] == min(seen)  # before training and the last weights


def test_averaged_weights_are_the_moving_average_of_the_trajectory(tmp_path):
    from stream_denoise.train.loop import fit

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.rand(4, 3, 16, 16)
    seen: list[torch.Tensor] = []  # the weights before each step

    def step_loss(r: np.random.Generator) -> torch.Tensor:
        seen.append(model.weight.detach().clone())
        return ((model(x) - x.flip(-1)) ** 2).mean()

    ckpt = tmp_path / "run.ckpt"
    s = fit(model, step_loss, steps=20, lr=3e-2, average=0.8, checkpoint=ckpt, progress=False)
    state = torch.load(ckpt, weights_only=False)
    trajectory = [*seen, state["model"]["weight"]]  # the live weights after the last step are in the checkpoint
    expected = trajectory[0]
    for n, w in enumerate(trajectory[1:]):
        d = min(0.8, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * w
    assert s["steps"] == 20 and state["average"]["n"] == 20
    assert torch.allclose(model.weight, expected, atol=1e-6)  # the model returned holds the average...
    assert not torch.allclose(model.weight, trajectory[-1], atol=1e-3)  # ...not the last step's weights


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_ends_training_between_steps_and_the_resumed_run_is_exact(tmp_path, sig):
    """Ctrl-C or SIGTERM (a GPU slice ending) mid-run: the step in flight finishes, the checkpoint is
    written, and resuming gives the weights of the run that was never stopped."""
    import os
    import signal

    from stream_denoise.train.loop import fit

    x = torch.rand(4, 3, 16, 16)

    def run(ckpt, steps, stop_at=None):
        torch.manual_seed(0)
        model = torch.nn.Conv2d(3, 3, 3, padding=1)
        def step_loss(r: np.random.Generator) -> torch.Tensor:
            noise = torch.from_numpy(r.standard_normal(x.shape).astype(np.float32)) * 0.1
            return ((model(x + noise) - x.flip(-1)) ** 2).mean()

        def on_step(step: int) -> None:
            if step == stop_at:  # the signal arrives while step `stop_at` is being computed
                os.kill(os.getpid(), getattr(signal, sig))

        s = fit(model, step_loss, steps=steps, lr=1e-2, average=0.9, checkpoint=ckpt, checkpoint_every=100,
                progress=False, on_step=on_step)
        return model, s

    whole, _ = run(tmp_path / "whole.ckpt", 8)
    before = signal.getsignal(signal.SIGINT)
    _, s = run(tmp_path / "cut.ckpt", 8, stop_at=3)
    assert s["stopped_by"] == sig and s["steps"] == 4  # step 3 (0-based) finished, nothing after it
    assert torch.load(tmp_path / "cut.ckpt", weights_only=False)["step"] == 4
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are given back
    resumed, s = run(tmp_path / "cut.ckpt", 8)
    assert s["steps"] == 8 and s["stopped_by"] is None
    assert torch.equal(resumed.weight, whole.weight) and torch.equal(resumed.bias, whole.bias)


def test_bfloat16_steps_train_and_leave_a_float32_model():
    import torch

    from stream_denoise.train.loop import fit, use_bf16

    assert use_bf16("float32", torch.device("cpu")) is False and use_bf16("bfloat16", torch.device("cpu")) is True
    with pytest.raises(ValueError, match="unknown precision"):
        use_bf16("fp8", torch.device("cpu"))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3, padding=1))
    x = torch.rand(4, 3, 16, 16)
    before = torch.nn.functional.mse_loss(net(x), x).item()
    s = fit(net, lambda r: torch.nn.functional.mse_loss(net(x).float(), x), steps=150, lr=3e-3, progress=False, bf16=True)
    assert s["precision"] == "bfloat16 autocast"
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in net.parameters())  # not left channels-last
    assert torch.nn.functional.mse_loss(net(x), x).item() < 0.5 * before  # it learnt (checked in float32)


def test_noise_measurement_tells_white_from_correlated_noise(clip):
    clean, _ = clip
    long = np.concatenate([clean, clean[::-1]])
    white = measure_noise(add_noise(long, CONDITIONS["gaussian30"], seed=1))
    assert abs(white.sigma - 30 / np.sqrt(3)) < 4  # luma of 3 independent channels
    assert abs(white.spatial_corr[0]) < 0.1 and white.mask_spec().radius == 0
    from stream_denoise.noise import NoiseSpec

    mosaic = measure_noise(add_noise(long, NoiseSpec("camera", photons=60, read_noise=3, mosaic=True), seed=1))
    assert mosaic.spatial_corr[0] > 0.2 and mosaic.mask_spec().radius >= 1


def test_cli_fine_tune_writes_a_model_that_run_denoise_and_export_accept(tmp_path):
    from pathlib import Path

    sample = Path(__file__).parents[2] / "stream_denoise" / "data" / "sample_noisy.mp4"
    model = tmp_path / "cam.pt"
    res = run_cli("fine-tune", str(sample), "--out", str(model), "--steps", "6", "--max-frames", "30", "--seed", "1")
    assert res.returncode == 0, res.stderr
    assert "blind spot" in res.stderr and model.exists()
    from stream_denoise.model.checkpoint import model_meta

    assert model_meta(model)["clips"] == [str(sample)]  # the recordings it was read from
    assert denoise_cli(sample, tmp_path / "o.mkv", "--model", str(model)).shape[0] == 75
    res = run_cli("-q", "export", str(model), "--out", str(tmp_path / "cam.onnx"))
    assert res.returncode == 0 and (tmp_path / "cam.onnx").exists(), res.stderr


# ---------------------------------------------------------------------------------------------------
# the temporal objective: aligned frames outside the window as targets
# ---------------------------------------------------------------------------------------------------

def test_temporal_targets_come_from_outside_the_window():
    from stream_denoise.buffer import reflect_indices
    from stream_denoise.train.temporal import outside

    for frames, target in ((5, 2), (5, 4), (3, 1)):
        for length in (6, 9, 24):
            for t in range(length):
                window = set(reflect_indices(t, frames, target, length))
                for gap in (0, 2):
                    for u in outside(t, frames, target, length, gap):
                        if u is not None:  # its noise never reaches the input of frame t
                            assert 0 <= u < length and u not in window, (frames, target, length, t, u)
                before, after = outside(t, frames, target, length)
                assert before is not None or after is not None or length <= frames + 1
                far = outside(t, frames, target, length, 0, reach=3)  # 3 before (nearest first), 3 after
                assert far[0] == before and far[3] == after
                for side in (far[:3], far[3:]):
                    got = [u for u in side if u is not None]
                    assert all(u is not None for u in side[: len(got)])  # only the clip's ends cut a side short
                    assert not set(got) & window and len(set(got)) == len(got)
                    assert [abs(u - t) for u in got] == sorted(abs(u - t) for u in got)


def test_nearest_targets_are_left_out_of_the_input():
    from stream_denoise.buffer import reflect_indices
    from stream_denoise.train.temporal import nearest

    for frames, target in ((5, 2), (5, 4), (3, 1)):
        for length in (4, 6, 24):
            for t in range(length):
                us, win = nearest(t, frames, target, length)
                assert us == (t - 1 if t > 0 else None, t + 1 if t + 1 < length else None)
                assert len(win) == frames and win[target] == t  # the output frame stays where it was
                assert not {u for u in us if u is not None} & set(win)  # no target's noise in the input
                full = reflect_indices(t, frames, target, length)
                assert all(w == f for w, f in zip(win, full) if f not in us)  # only the targets are replaced


def test_sampled_windows_are_the_rows_input_frames():
    """A clip whose frame i is the grey level 10 i: a sampled window shows which frames it holds."""
    from stream_denoise.train.temporal import build, sample

    clip = np.repeat(np.arange(0, 120, 10, dtype=np.uint8), 32 * 32 * 3).reshape(12, 32, 32, 3)
    rng = np.random.default_rng(0)
    for near in (False, True):
        tc = build(clip, clip, 5, 2, tolerance=255.0, near=near)  # every aligned pixel counts
        assert len(tc.inputs) == len(tc.ts)
        for _ in range(20):
            x, tg, v, _ = sample([tc], 1, 5, 2, 16, rng)
            held = {int(f[0, 0, 0]) // 10 for f in x[0]}
            t = int(x[0, 2, 0, 0, 0]) // 10  # the centre frame (time reversal keeps it there)
            targets = {int(g[0, 0, 0]) // 10 for g, ok in zip(tg[0], v[0]) if ok.any()}
            assert targets and not targets & held  # the targets' frames never reach the input
            assert all(abs(u - t) == 1 for u in targets) if near else all(abs(u - t) >= 3 for u in targets)


def test_several_targets_pull_towards_their_mean():
    """The summed squared errors to S valid targets have the gradient of S times the error to their mean."""
    import torch

    from stream_denoise.train.temporal import loss

    net = torch.nn.Conv2d(15, 3, 3, padding=1)
    x = torch.rand(2, 15, 8, 8)
    tgt = torch.rand(2, 4, 3, 8, 8)
    grads = []
    for t, v in ((tgt, torch.ones_like(tgt)), (tgt.mean(dim=1, keepdim=True), torch.ones(2, 1, 3, 8, 8))):
        net.zero_grad()
        loss(net, x, t, v).backward()
        grads.append(net.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)  # the mean's noise is 1/S of one target's


def test_values_without_a_target_are_pulled_towards_the_anchor():
    """Only values no target covers feel the anchor; elsewhere the gradient is the targets' alone."""
    import torch

    from stream_denoise.train.temporal import loss

    class Out(torch.nn.Module):  # the "network" is its output: gradients land on each value
        def __init__(self) -> None:
            super().__init__()
            self.y = torch.nn.Parameter(torch.rand(1, 3, 4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.y

    net, x = Out(), torch.zeros(1, 15, 4, 4)
    tgt, anchor = torch.rand(1, 2, 3, 4, 4), torch.rand(1, 3, 4, 4)
    valid = torch.ones(1, 2, 3, 4, 4, dtype=torch.bool)
    valid[:, :, :, 0, 0] = False  # pixel (0, 0): no target aligns
    valid[:, 0, 1, 0, 1] = False  # one target of one channel missing: the other one still counts
    grads = []
    for w in (0.0, 1.0):
        net.zero_grad()
        loss(net, x, tgt, valid, anchor, anchor_weight=w).backward()
        grads.append(net.y.grad.clone())
    assert torch.all(grads[0][..., 0, 0] == 0)  # without the anchor the loss says nothing there
    expect = 2 * (net.y - anchor)[..., 0, 0] / (valid.sum() + 3)
    assert torch.allclose(grads[1][..., 0, 0], expect.detach(), atol=1e-6)  # pulled towards the anchor
    scale = (valid.sum() + 3) / valid.sum()  # elsewhere: the same direction; the free pixel joins the mean
    assert torch.allclose(grads[1][..., 1:, :] * scale, grads[0][..., 1:, :], atol=1e-6)
    assert torch.allclose(grads[1][..., 0, 1:] * scale, grads[0][..., 0, 1:], atol=1e-6)


def test_temporal_targets_follow_the_motion(clip):
    from stream_denoise.train.temporal import build

    clean, noisy = clip
    tc = build(clean, clean, 5, 2, reach=2)  # the clean clip as its own guide: targets are the aligned clean frames
    assert tc.target.shape[1] == 4 and tc.valid_fraction > 0.5
    assert np.array_equal(tc.anchor, clean[tc.ts])  # the anchor is the guide's frame
    oracle = build(noisy, clean, 5, 2, reach=2, source=clean)  # the oracle benchmark's clean targets of a noisy clip
    assert np.array_equal(oracle.target, tc.target) and np.array_equal(oracle.valid, tc.valid)
    assert not np.array_equal(build(noisy, clean, 5, 2, reach=2).target, tc.target)  # default: the clip's own frames
    err = np.abs(tc.target.astype(np.float32) - clean[:, None].astype(np.float32))
    assert float(err[tc.valid].mean()) < 3.0  # grey levels: aligned, not just nearby frames
    still = np.abs(clean[3:].astype(np.float32) - clean[:-3].astype(np.float32)).mean()
    assert still > 3 * float(err[tc.valid].mean())  # the clip moves: without alignment the error is far larger
    static = build(clean[:1].repeat(12, axis=0), clean[:1].repeat(12, axis=0), 5, 2)  # no motion: flow 0
    band = np.ones(clean.shape[1:3], bool)
    band[3:-4, 3:-4] = False  # within Lanczos' reach (3 px before, 4 after) of the border
    assert not static.valid[:, :, band].any() and static.valid.any(axis=1)[:, ~band].mean() > 0.9


@pytest.fixture(scope="module")
def pan():
    """A camera panning 2 whole pixels per frame over a photo: every frame is an exact crop, so
    aligned frames show the same clean scene (moving_clip resamples each frame with its own
    sub-pixel blur, which no flow can undo)."""
    photo = skimage_photos()[2]  # chelsea: mostly mid-tones
    clean = np.stack([photo[60:156, 80 + 2 * t : 176 + 2 * t] for t in range(24)])
    return clean, add_noise(clean, CONDITIONS["gaussian30"], seed=5)


@pytest.fixture(scope="module")
def pools_of(pan):
    """``finetune._temporal_pools`` of the shipped ``lite`` on 12 frames of the pan, for given noise statistics."""
    from stream_denoise import model_files, noise_level
    from stream_denoise.model import load_model
    from stream_denoise.train.data import Pair
    from stream_denoise.train.finetune import _temporal_pools

    _, noisy = pan
    model = load_model(model_files.resolve("lite", ".pt"))
    sigmas = noise_level.estimate_clip(noisy, n=8)
    return lambda stats: _temporal_pools(model, [Pair(noisy[:12], None)], [], stats, sigmas)


def test_targets_near_black_are_kept_and_lowered_over_a_range_that_grows_with_the_shadows_noise(pools_of):
    """A sensor's noise is larger in the shadows (``shadow_ratio``), so clipping biases the targets
    farther from black: the black-bias table reaches that much farther. Values near black keep
    their targets (lowered by the table); values within the margin of white get none (the anchor
    holds them)."""
    from stream_denoise.train.temporal import BIAS_REACH

    for ratio, expect in ((0.8, 1.0), (2.0, 2.0)):
        stats = NoiseStats(sigma=8.0, spatial_corr=(0.0, 0.0), temporal_corr=0.0, shadow_ratio=ratio)
        pools = pools_of(stats)
        lo, hi = pools.how["clip_margin"]
        upto = expect * np.sqrt(3) * 8.0
        assert lo == 0 and hi == round(np.sqrt(3) * 8.0, 1) and pools.how["black_bias"]["upto"] == round(upto, 1)
        assert pools.bias is not None and pools.bias.shape == (256,)
        assert not pools.bias[int(np.ceil(BIAS_REACH * upto)) + 1 :].any()
        for c in pools.train:
            has_target = c.valid.any(axis=1)  # (T', H, W, 3)
            assert not has_target[c.anchor > 255 - hi + 0.5].any()
            assert has_target[c.anchor <= 255 - hi - 1].mean() > 0.5


def test_noise_that_is_not_independent_between_frames_takes_targets_beyond_the_nearest(pools_of):
    """A codec copies noise into the next frame (positive correlation) or its rate control alternates
    it (the CCTV-like condition measures -0.4 to -0.6): either way the nearest frames share the
    input's noise, so the targets are taken two frames beyond the window."""
    for rho, frames, gap in ((0.0, "nearest", 0), (0.5, "outside", 2), (-0.5, "outside", 2)):
        stats = NoiseStats(sigma=3.0, spatial_corr=(0.6, 0.3), temporal_corr=rho)
        how = pools_of(stats).how
        assert (how["frames"], how["gap"]) == (frames, gap), rho


def test_temporal_fine_tune_improves_its_start_and_records_the_objective(tmp_path, pan):
    clean, noisy = pan
    out = tmp_path / "cam.pt"
    summary = fine_tune([noisy], out, FineTune(init="lite", minutes=2, steps=300, seed=0, batch=8, patch=80,
                                               progress=False))
    assert summary["objective"] == "temporal"
    from stream_denoise import model_files
    from stream_denoise.model.checkpoint import model_meta

    meta = model_meta(out)
    assert meta["objective"] == "temporal" and meta["init"] == "lite"
    assert meta["clips"] == []  # decoded clips have no file to record
    targets = meta["temporal_targets"]  # how the targets were chosen for this noise (sigma 30: strong)
    assert targets["frames"] == "outside" and targets["per_side"] == 2 and targets["gap"] == 0
    assert 0.05 < targets["aligned_fraction"] <= 1
    assert meta["anchor_weight"] == 1.0  # values no target covers are held at the starting model's (ANCHOR_WEIGHT)
    lo, hi = targets["clip_margin"]  # no margin towards black: the targets there are lowered by their bias
    assert lo == 0 < hi <= targets["black_bias"]["upto"]
    assert meta["average"] == 0.998  # the weights kept are the moving average

    def score(model: str) -> float:
        den = Denoiser(create_backend(ModelConfig(model=model, backend="torch")))
        outs = [den.denoise_window(list(noisy[i - 2 : i + 3])) for i in range(2, len(noisy) - 2)]
        return float(np.mean([psnr(o, clean[i + 2]) for i, o in enumerate(outs)]))

    start, tuned = score(str(model_files.resolve("lite", ".pt"))), score(str(out))
    assert tuned > start + 0.3, (start, tuned)  # from noisy frames alone


def test_noise_measurement_tells_a_sensors_noise_from_noise_added_to_the_pixels():
    """shadow_ratio: a sensor's noise (linear light, through the gamma curve) is larger in the shadows
    of the 8-bit image; Gaussian noise added to the 8-bit values is not."""
    from stream_denoise.noise import NoiseSpec
    from stream_denoise.train.temporal import linear_for

    ramp = np.broadcast_to(np.linspace(0, 255, 160, dtype=np.float32)[None, :, None], (120, 160, 3))
    static = np.repeat(ramp[None].astype(np.uint8), 12, axis=0)  # a still scene: every pixel is static
    white = measure_noise(add_noise(static, CONDITIONS["gaussian15"], seed=1))
    sensor = measure_noise(add_noise(static, NoiseSpec("camera", photons=250, read_noise=3.0), seed=1))
    assert white.shadow_ratio < 1.15 and not linear_for(white.shadow_ratio)
    assert sensor.shadow_ratio > 1.3 and linear_for(sensor.shadow_ratio)


def test_linear_light_loss_is_unbiased_for_a_sensors_noise():
    """Noisy targets of one shadow value (sRGB 0.2) with zero-mean noise in linear light: the 8-bit
    loss is minimised by a darker value (the gamma curve bends the noise), the linear-light loss by
    the clean one."""
    from stream_denoise.noise import linear_to_srgb
    from stream_denoise.train.temporal import loss, to_linear

    g = torch.Generator().manual_seed(0)
    lin0 = float(to_linear(torch.tensor(0.2)))
    lin_t = lin0 + 0.02 * torch.randn(64, 2, 3, 8, 8, generator=g)
    tgt = torch.from_numpy(linear_to_srgb(lin_t.clamp(min=0).numpy())).clamp(0, 1)
    valid = torch.ones_like(tgt, dtype=torch.bool)
    x = torch.zeros(64, 15, 8, 8)
    grid = torch.linspace(0.15, 0.25, 201)

    def best(linear: bool) -> float:
        start = torch.full((64, 3, 8, 8), 0.21)  # the starting model's guess: it only sets the weights
        vals = [float(loss(lambda _x, v=v: torch.full((64, 3, 8, 8), float(v)), x, tgt, valid, anchor=start,
                           anchor_weight=0.0, linear=linear)) for v in grid]
        return float(grid[int(np.argmin(vals))])

    assert best(linear=False) < 0.2 - 0.006  # ~3 levels too dark
    assert abs(best(linear=True) - 0.2) < 0.002


def test_targets_near_black_lowered_by_their_measured_bias_are_unbiased():
    """Targets of dark values carry noise clipped at 0: their mean lies above the clean value, and a
    network fitted to them lifts the shadows. ``black_bias`` measures that lift against the
    starting model's estimate (here the clean value itself); lowered by it the targets are
    minimised by the clean value, and values beyond twice ``upto`` are left as they are."""
    from stream_denoise.train.temporal import TemporalClip, black_bias, loss

    rng = np.random.default_rng(0)
    levels = np.array([4, 10, 20, 100], np.uint8)
    clean = np.repeat(levels, 64 * 64 * 3).reshape(4, 64, 64, 3)  # four frames, one level each
    noisy_t = np.clip(np.round(clean[:, None].astype(np.float32) + rng.normal(0, 20, (4, 2, 64, 64, 3))), 0, 255)
    target = noisy_t.astype(np.uint8)
    clip = TemporalClip(clean, target, np.ones(target.shape, bool), [0, 1, 2, 3], clean, [[0]] * 4)
    table = black_bias([clip], linear=False, upto=30.0)
    assert table[100] == 0 and table[4] > table[10] > table[20] > 0

    x = torch.zeros(1, 15, 64, 64)
    grid = torch.linspace(0, 130, 1301) / 255

    def best(j: int, bias: torch.Tensor | None) -> float:
        tgt = torch.from_numpy(target[j : j + 1]).permute(0, 1, 4, 2, 3).float() / 255
        anchor = torch.from_numpy(clean[j : j + 1]).permute(0, 3, 1, 2).float() / 255
        valid = torch.ones_like(tgt, dtype=torch.bool)
        vals = [float(loss(lambda _x, v=v: torch.full((1, 3, 64, 64), float(v)), x, tgt, valid, anchor, 0.0,
                           bias=bias)) for v in grid]
        return 255 * float(grid[int(np.argmin(vals))])

    lut = torch.from_numpy(table)
    for j, v in enumerate(levels[:3].tolist()):
        assert best(j, None) > v + 1.5  # the clipped targets' mean, lifted: +6.1 at 4, +3.9 at 10, +1.7 at 20
        assert abs(best(j, lut) - v) < 0.6, v
    assert abs(best(3, lut) - 100) < 1.0
