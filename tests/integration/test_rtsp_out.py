"""Issue 27 acceptance: the cleaned stream over RTSP, end to end with real parts.

A GStreamer RTSP camera -> `stream-denoise run --rtsp-out` (real model, real ZeroMQ, real encoder,
the real gst-rtsp-server helper or FFmpeg's RTSP muxer) -> independent clients (ffprobe, ffmpeg, a
GStreamer rtspsrc pipeline) or a GStreamer RTSP server in RECORD mode. What they decode must be the
frames published on ZeroMQ (PSNR >= 40 dB at the default quality), all of them (within 2 %), with
the source's timestamps, and survive clients and servers going away.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.rtsp_out_helpers import Published, Run, decode_ts, ffmpeg_pull, ffprobe, free_port, gst_pull, match
from tests.waiting import wait_until

def write_config(path: Path, source: str, endpoint: str, metrics_port: int, rtsp_out: str) -> Path:
    path.write_text(f"""
status_interval_s = 1
metrics_port = {metrics_port}

[source]
uri = "{source}"
read_timeout_s = 3

[model]
model = "lite"
backend = "onnxruntime"

[publish]
endpoint = "{endpoint}"
sndhwm = 10000

[rtsp_out]
{rtsp_out}
""")
    return path


def check_matches(decoded: list, published: dict, what: str, pts_tolerance_s: float, pts_from: int = 0) -> None:
    """The decoded frames are the published ones: consecutive, within H.264's loss, and timed as the
    source timed them (from frame ``pts_from`` on: ffmpeg's RTSP client gives the first packet of a
    session no timestamp -- ``ffprobe -show_packets`` shows N/A -- and ``-c copy`` invents one)."""
    assert len(decoded) >= 20, f"{what}: only {len(decoded)} frames decoded"
    pts = [p for p, _ in decoded]
    assert all(b > a for a, b in zip(pts, pts[1:])), f"{what}: timestamps not increasing"
    m = match(decoded, published)
    assert all(b > a for a, b in zip(m.seqs, m.seqs[1:])), f"{what}: frames repeated or reordered: {m.seqs}"
    assert abs(len(decoded) - m.expected) <= 0.02 * m.expected, f"{what}: {len(decoded)} frames of {m.expected}"
    assert np.mean(m.psnr) >= 40, f"{what}: mean PSNR {np.mean(m.psnr):.2f} dB"
    assert min(m.psnr) >= 36, f"{what}: worst frame {min(m.psnr):.2f} dB"
    errors = [e - m.pts_error_s[pts_from] for e in m.pts_error_s[pts_from:]]
    assert max(map(abs, errors)) <= pts_tolerance_s, f"{what}: timestamps differ from the source's by {errors}"


def started(run: Run, metrics_port: int, key: str = "frames_out", least: float = 10, timeout: float = 90) -> bool:
    """Whether the run reports ``key`` >= ``least`` on /metrics within ``timeout`` (False at once if it exited)."""
    wait_until(lambda: not run.alive() or run.metrics(metrics_port).get(key, 0) >= least, timeout)
    return run.alive() and run.metrics(metrics_port).get(key, 0) >= least


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp, IPv4)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if int(p, 16) == port and state == "0A":
            found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


@pytest.fixture
def published_endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path / 'pub'}"


def test_serve_to_ffmpeg_and_gstreamer_clients(rtsp_server, tmp_path, published_endpoint):
    rtsp_port, metrics_port = free_port(), free_port()
    url = f"rtsp://127.0.0.1:{rtsp_port}/stream"
    cfg = write_config(tmp_path / "run.toml", rtsp_server.url, published_endpoint, metrics_port, "")
    pub = Published(published_endpoint)
    # the server's warnings (why it closed a client, if it does) reach the run's log: GStreamer's own
    # debug output at WARNING for gst-rtsp-server's client, stream and media
    run = Run(["--config", str(cfg), "--rtsp-out", "--rtsp-listen", f"127.0.0.1:{rtsp_port}"], tmp_path / "run.log",
              env={"GST_DEBUG": "rtspclient:2,rtspstream:2,rtspmedia:2", "GST_DEBUG_NO_COLOR": "1"})
    try:
        assert started(run, metrics_port), run.output()
        assert listening_addresses(rtsp_port) == {"127.0.0.1"}  # loopback by default
        m = run.metrics(metrics_port)
        assert m["rtsp_clients"] == 0 and m["rtsp_sent"] == 0 and m["rtsp_idle"] > 0  # nobody watches: not encoded

        probe = ffprobe(url)
        assert probe.returncode == 0, probe.stderr
        assert "codec_name=h264" in probe.stdout and "has_b_frames=0" in probe.stdout, probe.stdout
        assert "width=160" in probe.stdout and "height=96" in probe.stdout and "color_space=bt709" in probe.stdout

        got = ffmpeg_pull(url, 90, tmp_path / "ffmpeg.ts")
        assert got.returncode == 0, got.stderr
        check_matches(decode_ts(tmp_path / "ffmpeg.ts"), pub.frames, "ffmpeg", pts_tolerance_s=0.002, pts_from=1)

        # the client went away; a second client (GStreamer) comes and goes
        assert wait_until(lambda: run.metrics(metrics_port).get("rtsp_clients") == 0, 20)
        got = gst_pull(url, 4.0, tmp_path / "gst.ts")
        assert got.returncode == 0, f"{got.stdout}\nthe run's log:\n{run.output()[-3000:]}"
        check_matches(decode_ts(tmp_path / "gst.ts"), pub.frames, "gst rtspsrc", pts_tolerance_s=0.002)

        # ...and the first comes back
        got = ffmpeg_pull(url, 30, tmp_path / "again.ts")
        assert got.returncode == 0, got.stderr
        check_matches(decode_ts(tmp_path / "again.ts"), pub.frames, "ffmpeg again", pts_tolerance_s=0.002, pts_from=1)

        m = run.metrics(metrics_port)
        assert m["rtsp_sent"] >= 120 and m["rtsp_dropped"] == 0 and m["rtsp_reconnects"] == 0, m
        assert "rtsp clients" in run.output()  # the status line shows the RTSP output
    finally:
        code = run.stop()
        pub.close()
    assert code == 0, run.output()[-3000:]


def test_serve_basic_auth_and_h265(rtsp_server, tmp_path, published_endpoint):
    rtsp_port, metrics_port = free_port(), free_port()
    cfg = write_config(tmp_path / "run.toml", rtsp_server.url, published_endpoint, metrics_port,
                       f'port = {rtsp_port}\npath = "yard/clean"\ncodec = "h265"\nusername = "viewer"\npassword = "s3cret"')
    pub = Published(published_endpoint)
    run = Run(["--config", str(cfg)], tmp_path / "run.log")
    try:
        assert started(run, metrics_port), run.output()
        no_auth = ffprobe(f"rtsp://127.0.0.1:{rtsp_port}/yard/clean")
        assert no_auth.returncode != 0 and "401" in no_auth.stderr, no_auth
        wrong = ffprobe(f"rtsp://viewer:nope@127.0.0.1:{rtsp_port}/yard/clean")
        assert wrong.returncode != 0, wrong
        url = f"rtsp://viewer:s3cret@127.0.0.1:{rtsp_port}/yard/clean"
        probe = ffprobe(url)
        assert probe.returncode == 0 and "codec_name=hevc" in probe.stdout, probe
        got = ffmpeg_pull(url, 45, tmp_path / "hevc.ts")
        assert got.returncode == 0, got.stderr
        check_matches(decode_ts(tmp_path / "hevc.ts"), pub.frames, "ffmpeg h265", pts_tolerance_s=0.002, pts_from=1)
        assert "s3cret" not in run.output()
    finally:
        code = run.stop()
        pub.close()
    assert code == 0, run.output()[-3000:]


def helper_of(run: Run) -> int:
    """The pid of the run's RTSP server helper (its child running gst_server.py)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == run.proc.pid and b"gst_server.py" in cmdline:
                return int(entry.name)
    raise AssertionError("no RTSP server helper")


def test_serve_stalled_server_drops_at_the_encoder_and_restarts(rtsp_server, tmp_path, published_endpoint):
    rtsp_port, metrics_port = free_port(), free_port()
    url = f"rtsp://127.0.0.1:{rtsp_port}/stream"
    # lossless frames (crf 0) fill the helper's 1 MiB pipe within seconds once it stops reading
    cfg = write_config(tmp_path / "run.toml", rtsp_server.url, published_endpoint, metrics_port,
                       f"port = {rtsp_port}\ncrf = 0\nio_timeout_s = 2")
    pub = Published(published_endpoint)
    run = Run(["--config", str(cfg)], tmp_path / "run.log")
    viewer = None
    try:
        assert started(run, metrics_port), run.output()
        viewer = subprocess.Popen(["ffmpeg", "-v", "error", "-rtsp_transport", "tcp", "-i", url, "-f", "null", "-"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert started(run, metrics_port, "rtsp_sent", 30), run.output()
        helper = helper_of(run)
        os.kill(helper, signal.SIGSTOP)  # the server stops reading: the pipe fills, frames drop before encoding
        t_stall = time.monotonic()
        assert wait_until(lambda: run.metrics(metrics_port).get("rtsp_dropped", 0) >= 10, 30), run.output()[-3000:]
        assert wait_until(lambda: run.metrics(metrics_port).get("rtsp_reconnects", 0) >= 1, 30), run.output()[-3000:]
        assert helper_of(run) != helper  # the stalled helper was killed and replaced
        assert pub.max_gap_s(t_stall, time.monotonic()) < 2.0, "ZeroMQ publishing stalled with the RTSP server"
        got = ffmpeg_pull(url, 30, tmp_path / "after.ts")  # clients can come back
        assert got.returncode == 0, got.stderr
        check_matches(decode_ts(tmp_path / "after.ts"), pub.frames, "after the restart", pts_tolerance_s=0.002,
                      pts_from=1)
        assert "read nothing for 2 s" in run.output()
        status = re.compile(r"\| rtsp clients \d+ sent \d+ dropped [1-9]\d* reconnects [1-9]")  # the status line tells
        assert wait_until(lambda: status.search(run.output()), 15), run.output()[-2000:]
    finally:
        if viewer is not None:
            viewer.kill()
            viewer.wait(timeout=10)
        code = run.stop()
        pub.close()
    assert code == 0, run.output()[-3000:]


def test_push_to_a_media_server_that_dies_and_returns(rtsp_server, record_server, tmp_path, published_endpoint):
    metrics_port = free_port()
    cfg = write_config(tmp_path / "run.toml", rtsp_server.url, published_endpoint, metrics_port,
                       f'url = "{record_server.url}"')
    pub = Published(published_endpoint)
    run = Run(["--config", str(cfg)], tmp_path / "run.log")
    try:
        assert started(run, metrics_port, "rtsp_sent", 90), run.output()
        assert run.metrics(metrics_port)["rtsp_connected"] == 1

        record_server.kill()  # the media server dies...
        down = time.monotonic()
        time.sleep(3)
        m = run.metrics(metrics_port)
        assert m["rtsp_connected"] == 0 and m["rtsp_dropped"] >= 45, m  # ~3 s of frames, dropped and counted
        record_server.start()  # ... and comes back
        back = time.monotonic()
        assert wait_until(lambda: len(record_server.files()) >= 2 and record_server.files()[-1].stat().st_size > 0, 15)
        resumed = time.monotonic() - back
        assert resumed < 5, f"the stream resumed {resumed:.1f} s after the server returned"
        assert pub.max_gap_s(down - 1, time.monotonic()) < 2.0, "ZeroMQ publishing stalled while the target was down"
        sent = run.metrics(metrics_port)["rtsp_sent"]
        assert wait_until(lambda: run.metrics(metrics_port)["rtsp_sent"] >= sent + 90, 30)
        m = run.metrics(metrics_port)
        assert m["rtsp_reconnects"] == 1 and m["rtsp_connected"] == 1, m
        out = run.output()
        assert "rtsp up" in out and "rtsp down" in out and "reconnects 1" in out  # the status line tells
    finally:
        code = run.stop()
        pub.close()
    assert code == 0, run.output()[-3000:]
    sessions = record_server.files()
    assert len(sessions) == 2, sessions
    check_matches(decode_ts(sessions[0]), pub.frames, "recorded before the fault", pts_tolerance_s=0.002)
    check_matches(decode_ts(sessions[1]), pub.frames, "recorded after the fault", pts_tolerance_s=0.002)
