"""Self-supervised fine-tuning learns to denoise from noisy frames alone, and writes a usable model."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stream_denoise.config import ModelConfig  # noqa: E402
from stream_denoise.backends import create_backend  # noqa: E402
from stream_denoise.denoiser import Denoiser  # noqa: E402
from stream_denoise.noise import CONDITIONS, add_noise  # noqa: E402
from stream_denoise.train.data import moving_clip, skimage_photos  # noqa: E402
from stream_denoise.train.finetune import fine_tune  # noqa: E402
from stream_denoise.train.masking import measure_noise  # noqa: E402
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
    summary = fine_tune([], out, init=None, arch="lite", minutes=3, steps=400, seed=0, batch=8, patch=48,
                        lr=5e-3, frames=[noisy], progress=False)
    assert out.exists() and summary["steps"] > 0 and summary["best_val"] is not None
    den = Denoiser(create_backend(ModelConfig(model=str(out), backend="torch")))
    outs = [den.denoise_window(list(noisy[i - 2 : i + 3])) for i in range(2, len(noisy) - 2)]
    before = np.mean([psnr(noisy[i], clean[i]) for i in range(2, len(noisy) - 2)])
    after = np.mean([psnr(o, clean[i + 2]) for i, o in enumerate(outs)])
    assert after > before + 2.0, (before, after)


def test_checkpoint_resume_continues(tmp_path, clip):
    _, noisy = clip
    out = tmp_path / "cam.pt"
    fine_tune([], out, init=None, minutes=1, steps=10, frames=[noisy], progress=False, patch=32, batch=2)
    again = fine_tune([], out, init=None, minutes=1, steps=20, frames=[noisy], progress=False, patch=32, batch=2)
    assert again["steps"] == 20  # resumed at step 10 from cam.ckpt, not restarted


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
    assert denoise_cli(sample, tmp_path / "o.mkv", "--model", str(model)).shape[0] == 75
    res = run_cli("-q", "export", str(model), "--out", str(tmp_path / "cam.onnx"))
    assert res.returncode == 0 and (tmp_path / "cam.onnx").exists(), res.stderr
