"""Running the real `stream-denoise` command from tests."""

import subprocess
import sys
from pathlib import Path

import numpy as np


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m stream_denoise ARGS` with captured text output."""
    return subprocess.run([sys.executable, "-m", "stream_denoise", *args], capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """A non-zero exit with exactly one stderr line, ``stream-denoise: error: ...`` holding ``needles``,
    and no traceback; returns that line."""
    assert res.returncode != 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("stream-denoise: error:"), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def denoise_cli(src: Path, out: Path, *extra: str) -> np.ndarray:
    """`stream-denoise denoise SRC OUT` with the lite model on ONNX Runtime (unless ``extra`` says
    otherwise); asserts success and returns OUT decoded, (T, H, W, 3) uint8 RGB."""
    from stream_denoise.train.data import read_clip

    res = run_cli("-q", "denoise", str(src), str(out), *(extra or ("--model", "lite", "--backend", "onnxruntime")))
    assert res.returncode == 0, res.stderr
    return read_clip(out)
