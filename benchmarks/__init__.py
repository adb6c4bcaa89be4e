"""Benchmarks of stream_denoise: quality against classical peers, speed per stage, pictures.

    python -m benchmarks all            # every number and picture, then BENCHMARKS.md
    python -m benchmarks all --quick    # the CI smoke test (< 3 min on 2 cores)

Modules: clips (frozen noisy clips), metrics (PSNR/SSIM/flicker), peers (classical denoisers),
models (our network: resolve, run, fine-tune, supervised), quality, speed, pictures, report.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root
RESULTS_DIR = Path(__file__).resolve().parent / "results"
CACHE_DIR = Path(__file__).resolve().parent / "cache"  # git-ignored
