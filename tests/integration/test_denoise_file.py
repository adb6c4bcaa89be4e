"""`stream-denoise denoise`: whole file in, same number of frames, same size, same order, and the
same pixels as the denoiser called directly; Ctrl-C/SIGTERM on `run` shuts down cleanly."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from stream_denoise.backends import create_backend
from stream_denoise.config import ModelConfig
from stream_denoise.denoiser import Denoiser
from stream_denoise.frame import Frame
from stream_denoise.train.data import read_clip
from stream_denoise.video_writer import VideoWriter
from tests.cli_helpers import denoise_cli

SAMPLE = Path(__file__).parents[2] / "stream_denoise" / "data" / "sample_noisy.mp4"


def test_denoise_round_trips_odd_sizes_and_matches_direct_calls(tmp_path):
    rng = np.random.default_rng(0)
    h, w, n = 67, 101, 13  # odd, and not a multiple of the network's stride
    frames = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    frames[:, :, :, 0] = np.arange(n, dtype=np.uint8)[:, None, None] * 19  # each frame tells its index
    src = tmp_path / "in.mkv"
    with VideoWriter(src, w, h, 25) as vw:
        for f in frames:
            vw.write(f)
    got = denoise_cli(src, tmp_path / "out.mkv")
    assert got.shape == frames.shape

    den = Denoiser(create_backend(ModelConfig(model="lite", backend="onnxruntime")))
    direct = []
    for i, f in enumerate(frames):
        direct += den.push(Frame(f, i, i / 25, 0.0, "x"))
    direct += den.flush()
    assert [f.index for f in direct] == list(range(n))
    assert np.array_equal(got, np.stack([f.pixels for f in direct]))


def test_sigterm_stops_cleanly_and_finishes_the_recording(tmp_path):
    out = tmp_path / "live.mkv"
    proc = subprocess.Popen([sys.executable, "-m", "stream_denoise", "run", "--source", str(SAMPLE), "--loop",
                             "--realtime", "--no-publish", "--output", str(out), "--status-interval", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60

    def partial_size() -> int:  # the recording is written as live.mkv.PID.part until it is finished
        return sum(p.stat().st_size for p in tmp_path.glob("live.mkv.*.part"))

    while time.monotonic() < deadline and partial_size() <= 50_000:
        time.sleep(0.2)
    assert not out.exists()  # nothing under the final name before the file is finished
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, log
    assert "Traceback" not in log and "signal 15: stopping" in log and "fps in" in log
    assert not list(tmp_path.glob("*.part"))
    frames = read_clip(out)  # a finished, decodable file
    assert len(frames) > 5 and frames.shape[1:] == (204, 480, 3)
