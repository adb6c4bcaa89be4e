"""Nothing lost, nothing silent (issue 22): outputs never over an input or each other, files finished
and renamed on every stop signal, recordings that keep the stream's timing and survive outages and
resolution changes, and the small trips (messages, warnings, status lines) that hid losses."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from stream_denoise.config import ModelConfig, OutputConfig, PublishConfig, RunConfig, SourceConfig
from stream_denoise.frame import Frame
from stream_denoise.pipeline import Pipeline
from stream_denoise.publish import Publisher
from stream_denoise.train.data import read_clip
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.waiting import wait_until

SAMPLE = Path(__file__).parents[2] / "stream_denoise" / "data" / "sample_noisy.mp4"
LITE = ("--model", "lite", "--backend", "onnxruntime")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli("-q", *args, timeout=120)


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "stream_denoise", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def written(path: Path) -> int:
    """Bytes written so far to ``path``, under its final name or its ``.part`` name."""
    return sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*") if p.is_file())


def ffprobe_frames(path: Path) -> int:
    """Frames ffprobe decodes from ``path`` (fails on a file without an index, e.g. an mp4 without moov)."""
    res = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "json", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return int(json.loads(res.stdout)["streams"][0]["nb_read_frames"])


class Producer:
    """Publishes 160x96 frames in a thread: frame i has pts ``i * pts_step`` and is sent every
    ``every_s`` seconds; ``pause()`` holds it (a camera outage) until ``resume()``."""

    def __init__(self, pts_step: float = 0.1, every_s: float = 0.02) -> None:
        self.pub = Publisher(PublishConfig(endpoint="tcp://127.0.0.1:*", sndhwm=1000))
        self.endpoint = self.pub.endpoint
        self.pts_step, self.every_s = pts_step, every_s
        self.sent = 0
        self._stop, self._go = threading.Event(), threading.Event()
        self._go.set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        t0 = time.time()
        while not self._stop.is_set():
            self._go.wait(0.1)
            if not self._go.is_set():
                continue
            i = self.sent
            px = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
            self.pub.send(Frame(px, i, i * self.pts_step, t0 + i * self.pts_step, "cam"))
            self.sent += 1
            time.sleep(self.every_s)

    def pause(self) -> None:
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.pub.close()


@pytest.fixture
def producer() -> Iterator[Producer]:
    p = Producer()
    try:
        yield p
    finally:
        p.close()


# -- 1. the output-path rule ------------------------------------------------------------------------

def test_denoise_refuses_an_output_that_is_its_input(tmp_path: Path) -> None:
    src = tmp_path / "in.mp4"
    shutil.copy(SAMPLE, src)
    before = digest(src)
    (tmp_path / "link.mp4").symlink_to(src)
    os.link(src, tmp_path / "hard.mp4")
    for out in ("in.mp4", "link.mp4", "hard.mp4", "./sub/../in.mp4"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert_one_line_error(cli("denoise", str(src), str(tmp_path / out), *LITE), "same file", "input")
    assert digest(src) == before and len(read_clip(src)) == 75


def test_run_outputs_never_overwrite_the_source_or_each_other(tmp_path: Path) -> None:
    src = tmp_path / "in.mkv"
    shutil.copy(SAMPLE, tmp_path / "in.mp4")
    shutil.copy(SAMPLE, src)  # an .mkv name: a valid --output extension
    before = digest(src)
    base = ("run", "--source", str(src), *LITE)
    for args in (("--no-publish", "--output", str(src)),
                 ("--no-publish", "--output", str(tmp_path / "a.mkv"), "--record-input", str(src)),
                 ("--no-publish", "--output", str(tmp_path / "a.mkv"), "--record-input", str(tmp_path / "a.mkv")),
                 ("--publish", f"ipc://{src}")):  # ZeroMQ would unlink the file to bind its socket there
        assert_one_line_error(cli(*base, *args), "same file")
    assert digest(src) == before
    cfg = tmp_path / "cam.toml"
    cfg.write_text(f'[source]\nuri = "{src}"\n\n[output]\npath = "{src}"\n')
    assert_one_line_error(cli("check-config", str(cfg)), "cam.toml:5", "output.path", "same file")


def test_subscribe_and_model_outputs_never_overwrite_inputs(tmp_path: Path) -> None:
    sock = tmp_path / "frames.mkv"
    assert_one_line_error(cli("subscribe", f"ipc://{sock}", "--out", str(sock), "--timeout", "1"), "same file")
    model = tmp_path / "m.onnx"
    shutil.copy(Path(__file__).parents[2] / "stream_denoise" / "models" / "lite.onnx", model)
    before = digest(model)
    assert_one_line_error(cli("export", str(model), "--out", str(model)), "same file")
    pt = tmp_path / "m.pt"
    shutil.copy(Path(__file__).parents[2] / "stream_denoise" / "models" / "lite.pt", pt)
    pt_before = digest(pt)
    assert_one_line_error(cli("fine-tune", str(SAMPLE), "--from", str(pt), "--out", str(pt), "--steps", "1"), "same file")
    assert digest(model) == before and digest(pt) == pt_before


# -- 2. SIGTERM / SIGHUP finish files in every command ---------------------------------------------------

@pytest.mark.parametrize("sig,suffix", [(signal.SIGTERM, ".mp4"), (signal.SIGHUP, ".mkv")])
def test_stop_signal_during_subscribe_leaves_a_playable_file(producer: Producer, tmp_path: Path,
                                                             sig: signal.Signals, suffix: str) -> None:
    out = tmp_path / f"x{suffix}"
    proc = spawn("subscribe", producer.endpoint, "--out", str(out))
    assert wait_until(lambda: written(out) > 30_000, 60), proc.stderr.read() if proc.poll() is not None else "slow"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    n = int(re.search(r"wrote (\d+) frames", err).group(1))  # type: ignore[union-attr]
    assert n > 0 and ffprobe_frames(out) == n
    assert not list(tmp_path.glob("*.part"))


def test_sigterm_during_denoise_finishes_the_frames_so_far(make_clip: Callable[..., Path], tmp_path: Path) -> None:
    src = make_clip("long.mp4", size=(320, 176), frames=900)
    out = tmp_path / "out.mkv"
    proc = spawn("denoise", str(src), str(out), *LITE)
    assert wait_until(lambda: written(out) > 300_000, 120), "no output"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "stream-denoise: interrupted"
    assert 0 < len(read_clip(out)) < 900
    assert not list(tmp_path.glob("*.part"))


def test_sighup_stops_run_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "live.mkv"
    proc = spawn("run", "--source", str(SAMPLE), "--loop", "--realtime", "--no-publish", "--output", str(out), *LITE)
    assert wait_until(lambda: written(out) > 50_000, 60), "no output"
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "signal 1: stopping" in err
    assert len(read_clip(out)) > 5 and not list(tmp_path.glob("*.part"))


# -- 5. subscribe keeps the stream's timing and records through outages -------------------------------

def test_subscribe_keeps_the_streams_frame_rate(producer: Producer, tmp_path: Path) -> None:
    out = tmp_path / "ten_fps.mkv"
    res = run_cli("-q", "subscribe", producer.endpoint, "--out", str(out), "--count", "30", timeout=60)
    assert res.returncode == 0, res.stderr
    with av.open(str(out)) as c:
        times = [float(f.time) for f in c.decode(video=0)]
    assert len(times) == 30
    assert times[-1] - times[0] == pytest.approx(29 * 0.1, abs=0.02)  # a 10 fps stream stays 10 fps


def test_stream_clock_follows_pts_and_bridges_segments() -> None:
    from stream_denoise.video_writer import StreamClock

    clock = StreamClock()
    t = [clock(10.0, 100.0, 0), clock(10.1, 100.1, 0), clock(10.3, 100.3, 0)]  # a dropped frame keeps its gap
    t += [clock(0.0, 101.3, 1), clock(0.1, 101.4, 1)]  # reconnect: pts restart, 1 s of outage
    t += [clock(None, 101.6, 1), clock(None, 101.65, 1)]  # no pts: capture times
    assert t == pytest.approx([0.0, 0.1, 0.3, 1.3, 1.4, 1.6, 1.65])


def test_subscribe_records_through_an_outage_unless_told_otherwise(producer: Producer, tmp_path: Path) -> None:
    out = tmp_path / "rec.mkv"
    proc = spawn("subscribe", producer.endpoint, "--out", str(out), "--timeout", "1", "--count", "60")
    assert wait_until(lambda: written(out) > 0, 60)
    producer.pause()  # the camera is gone for 2.5 s: longer than --timeout
    time.sleep(2.5)
    producer.resume()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(read_clip(out)) == 60

    out2 = tmp_path / "idle.mkv"
    proc = spawn("-q", "subscribe", producer.endpoint, "--out", str(out2), "--idle-timeout", "1")
    assert wait_until(lambda: written(out2) > 0, 60)
    producer.pause()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()]
    assert "--idle-timeout" in err and "stream-denoise: error:" in err
    assert len(read_clip(out2)) == int(re.search(r"wrote (\d+) frames", err).group(1)) > 0  # type: ignore[union-attr]


# -- 10. resolution changes, .avi, messages, status line ---------------------------------------------------

def test_recording_goes_on_in_a_new_file_when_the_size_changes(make_clip: Callable[..., Path], tmp_path: Path) -> None:
    small = make_clip("rc-small.h264", size=(64, 48), frames=10, container_format="h264")
    large = make_clip("rc-large.h264", size=(96, 64), frames=12, container_format="h264")
    both = tmp_path / "both.h264"
    both.write_bytes(small.read_bytes() + large.read_bytes())
    out = tmp_path / "out.mkv"
    res = run_cli("run", "--source", str(both), "--no-publish", "--output", str(out), *LITE, timeout=120)
    assert res.returncode == 0, res.stderr
    assert read_clip(out).shape[:3] == (10, 48, 64) and read_clip(tmp_path / "out.1.mkv").shape[:3] == (12, 64, 96)
    assert res.stderr.count("frame size changed") == 1


def test_avi_output_says_it_is_lossy_mjpeg(tmp_path: Path) -> None:
    res = run_cli("denoise", str(SAMPLE), str(tmp_path / "o.avi"), *LITE, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "MJPEG" in res.stderr and "lossy" in res.stderr


def test_config_messages_have_no_pydantic_noise(tmp_path: Path) -> None:
    line = assert_one_line_error(cli("run", "--source", str(SAMPLE), "--no-publish"), "nothing consumes the frames")
    assert "Value error" not in line and ": :" not in line


def test_final_status_line_counts_the_whole_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stream_denoise.pipeline")
    cfg = RunConfig(source=SourceConfig(uri=str(SAMPLE)), model=ModelConfig(model="lite", backend="onnxruntime"),
                    publish=None, output=OutputConfig(path=tmp_path / "o.mkv"), status_interval_s=0.05)
    with Pipeline(cfg) as pipe:
        pipe.run()
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done:")]
    fps_in, fps_out = map(float, re.search(r"fps in\s+([\d.]+) out\s+([\d.]+)", done[-1]).groups())  # type: ignore[union-attr]
    assert fps_in > 0 and fps_in == pytest.approx(fps_out, rel=0.1)  # 75 in, 75 out over the same run


def test_single_camera_config_sets_the_metrics_host(tmp_path: Path) -> None:
    toml = tmp_path / "cam.toml"
    toml.write_text(f'metrics_port = 0\nmetrics_host = "127.0.0.2"\n\n[source]\nuri = "{SAMPLE}"\n\n'
                    f'[publish]\nendpoint = "ipc://{tmp_path / "p"}"\n\n[model]\nmodel = "lite"\nbackend = "onnxruntime"\n')
    res = cli("check-config", str(toml))
    assert res.returncode == 0, res.stderr
    from stream_denoise.config_file import check_config

    with Pipeline(check_config(toml)) as pipe:
        assert pipe.health is not None and pipe.health._server.server_address[0] == "127.0.0.2"
