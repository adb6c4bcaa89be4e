"""The benchmark suite's --quick mode (the CI smoke test): it runs end to end and writes sane results.

No quality thresholds beyond what must hold for any correct pipeline: the PSNR of the noisy input
matches theory (a check of the metric and the noise), and a trained model beats its input.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "STREAM_DENOISE_CACHE": str(out / "cache")}
    cmd = [sys.executable, "-m", "benchmarks", "all", "--quick", "--results", str(out / "results"),
           "--md", str(out / "BENCHMARKS.md"), "--cache", str(out / "cache")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _finite(v: float) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_writes_every_file(quick: Path) -> None:
    res = quick / "results"
    for name in ("quality.json", "speed.json", "psnr_vs_fps.png"):
        assert (res / name).stat().st_size > 0, name
    assert list(res.glob("crops-*.png"))
    md = (quick / "BENCHMARKS.md").read_text()
    for text in ("## Reading the numbers", "## Quality", "## Speed", "psnr_vs_fps.png", "python -m benchmarks all --quick"):
        assert text in md


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_quality_values(quick: Path) -> None:
    q = json.loads((quick / "results" / "quality.json").read_text())
    assert q["runs"]
    for run in q["runs"]:
        m = run["methods"]
        assert {"noisy", "lite/zero-shot", "lite/fine-tuned", "lite/supervised"} <= set(m)
        for key, e in m.items():
            if "skipped" in e:
                continue
            assert _finite(e["psnr"]) and 5 < e["psnr"] < 99, (key, e["psnr"])
            assert 0 < e["ssim"] <= 1 and _finite(e["psnr_subset"]), key
            assert len(e["psnr_frames"]) == (run["subset"]["frames"] if e["subset_only"] else run["scored_frames"])
            if e["kind"] == "peer":
                assert e["params"] in [g["params"] for g in e["grid"]]
        gauss = run["condition"] == "gaussian30"
        if gauss:  # AWGN sigma 30: 20 log10(255/30) = 18.59 dB (clipping at 0/255 raises it a little)
            assert abs(m["noisy"]["psnr"] - 18.59) < 1.0, m["noisy"]["psnr"]
        if gauss and not m["lite/zero-shot"]["untrained"]:
            assert m["lite/zero-shot"]["psnr"] > m["noisy"]["psnr"]
    assert any(r["condition"] == "gaussian30" for r in q["runs"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_speed_values(quick: Path) -> None:
    s = json.loads((quick / "results" / "speed.json").read_text())
    assert s["peak"]["measured_gflops"] > 0 and "nominal_how" in s["peak"]
    assert "available" in s["gpu"]
    ort = [r for r in s["runs"] if r["backend"] == "onnxruntime"]
    assert ort, s["skipped"]
    for r in ort:  # `stream-denoise denoise` timed file to file: every frame of the clip written
        assert r["denoise_file"]["frames"] == s["settings"]["file_frames"] and r["denoise_file"]["fps"] > 0
    for r in s["runs"]:
        assert r["fps"] > 0 and r["macs_per_pixel"] > 0 and r["gflops"] > 0
        for stage in ("decode", "pre", "infer", "post", "publish", "e2e"):
            st = r["stages"][stage]
            assert _finite(st["median_ms"]) and 0 <= st["median_ms"] <= st["p99_ms"], (stage, st)
    assert any("fps" in p and p["fps"] > 0 for p in s["peers"])


def test_metrics_match_theory() -> None:
    if str(ROOT) not in sys.path:  # `benchmarks` is a top-level folder, not an installed package
        sys.path.insert(0, str(ROOT))
    from benchmarks import metrics

    rng = np.random.default_rng(0)
    clean = np.full((3, 64, 64, 3), 128, np.uint8)
    noisy = np.clip(np.round(clean + rng.normal(0, 10, clean.shape)), 0, 255).astype(np.uint8)
    assert abs(metrics.psnr(noisy[0], clean[0]) - metrics.gaussian_psnr(10)) < 0.1
    assert metrics.psnr(clean[0], clean[0]) == metrics.PSNR_CAP
    assert metrics.flicker(clean, clean) == 0.0
    assert metrics.flicker(noisy, clean) == pytest.approx(10 * math.sqrt(2), rel=0.05)  # diff of two noises
    assert metrics.ssim(clean[0], clean[0]) == pytest.approx(1.0)
    # dark: only pixels whose clean value is below 32 count; a uniform shift there is read exactly
    scene = np.concatenate([np.full((2, 8, 8, 3), 20, np.uint8), np.full((2, 8, 8, 3), 200, np.uint8)], axis=2)
    darker = scene.copy()
    darker[:, :, :8] -= 3
    darker[:, :, 8:] += 9  # bright pixels are left out
    assert metrics.dark_bias(darker, scene) == pytest.approx(-3.0)
    assert math.isnan(metrics.dark_bias(clean, clean))  # no dark pixel


def test_shadow_split_tells_a_lifted_black_level_from_lost_dark_detail() -> None:
    """benchmarks.shadows: a thin dark line filled in shows beside detail, a raised black level in flat shadows."""
    pytest.importorskip("cv2")
    from benchmarks.shadows import split

    clean = np.full((2, 64, 96, 3), 120, np.uint8)
    clean[:, :, :48] = 10  # a large flat shadow
    clean[:, 30:32, 60:90] = 4  # a thin dark line on a bright wall
    lost = clean.copy()
    lost[:, 30:32, 60:90] = 120  # the line is gone (a codec at 0.1 bit/pixel)
    s = split(lost, clean)
    assert s["flat"] == 0.0 and s["left_dark"] == 0.0 and s["bands"]["0-8"] == 116.0  # the line: 0-8 alone
    assert s["beside_detail"] > 5  # the line, diluted by the shadow's border (beside detail too, error 0)
    assert s["dark"] > 2  # the benchmark's one figure sees a lift either way
    lifted = clean.copy()
    lifted[:, :, :48] = 13  # a black level raised by 3
    s = split(lifted, clean)
    assert s["flat"] == 3.0 and s["bands"]["8-16"] == 3.0 and s["bands"]["0-8"] == 0.0  # the line untouched
    assert 2.5 < s["left_dark"] < 3.0  # what the viewer sees as shadow: the raised wall and the (exact) line


def test_noise_free_pipeline_keeps_the_mosaic_and_codec_and_drops_the_noise() -> None:
    """benchmarks.shadows' reference row: the condition's demosaicing (and codec) without its sensor noise."""
    pytest.importorskip("cv2")
    from benchmarks.shadows import noise_free
    from stream_denoise.noise import CONDITIONS, add_noise

    assert noise_free(CONDITIONS["gaussian30"]) is None and noise_free(CONDITIONS["lowlight-iso6400"]) is None
    cctv = noise_free(CONDITIONS["cctv"])
    assert cctv is not None and cctv.mosaic and cctv.codec == CONDITIONS["cctv"].codec
    flat = np.full((2, 32, 32, 3), 60, np.uint8)
    mosaic_only = noise_free(replace(CONDITIONS["cctv"], codec=None))
    assert mosaic_only is not None
    assert np.abs(add_noise(flat, mosaic_only, 1).astype(int) - 60).max() <= 1  # no noise left on a flat grey
    edge = flat.copy()
    edge[:, :, 16:] = 220
    edge[:, :, :16] = 2
    demosaiced = add_noise(edge, mosaic_only, 1)
    assert demosaiced[:, :, 15].mean() > 4  # bilinear demosaicing lifts the dark column beside the bright one
