"""Helpers of the RTSP output tests and benchmark: running `stream-denoise run`, collecting what it
publishes over ZeroMQ, pulling its RTSP stream with independent clients (ffmpeg, GStreamer), and
matching the decoded frames to the published ones."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


SYSTEM_PYTHON = "/usr/bin/python3"
RECORD_SERVER_SCRIPT = Path(__file__).with_name("rtsp_record_server.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_ready(cmd: list[str], log_path: Path, timeout_s: float = 20.0) -> subprocess.Popen[bytes]:
    """Start ``cmd`` (stderr to ``log_path``) and wait for it to print READY (AssertionError if it does not)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    deadline, seen = time.monotonic() + timeout_s, b""
    while time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stdout.read() or b""
        if b"READY" in seen:
            return proc
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=10)
    raise AssertionError(f"{cmd[1]} did not start: {log_path.read_text(errors='replace')[-2000:]}")


class RecordServer:
    """gst-rtsp-server in RECORD mode at :attr:`url` (``rtsp://127.0.0.1:PORT/cam``), the stand-in for a
    media server; each session the pusher opens is written to its own MPEG-TS file in ``outdir``
    (:meth:`files`, oldest first)."""

    def __init__(self, outdir: Path, log_path: Path, codec: str = "h264") -> None:
        self.outdir, self.log_path, self.codec = outdir, log_path, codec
        self.port = free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.proc = spawn_ready([SYSTEM_PYTHON, str(RECORD_SERVER_SCRIPT), str(self.port), str(self.outdir), self.codec],
                                self.log_path)

    def kill(self) -> None:
        """SIGKILL (the media server crashes) and reap."""
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.kill()
            self.proc.wait(timeout=10)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None

    def files(self) -> list[Path]:
        return sorted(self.outdir.glob("*.ts"))  # named by start time


class Run:
    """`python -m stream_denoise run ARGS` in the background, its output in ``log`` (``env``: added to
    this process's environment)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "stream_denoise", "run", *args],
                                         stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def metrics(self, port: int) -> dict[str, float]:
        """The Prometheus /metrics of the run, ``stream_denoise_`` prefix and ``_total`` removed, labelled samples
        as ``name{label="value"}``; {} while not serving."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        from prometheus_client.parser import text_string_to_metric_families

        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.name.removeprefix("stream_denoise_").removesuffix("_total")
                labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
                out[f"{name}{{{labels}}}" if labels else name] = float(sample.value)
        return out

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"run did not stop in {timeout} s:\n{self.output()[-3000:]}") from None


@dataclass
class Published:
    """A ZeroMQ subscriber thread keeping every frame: seq -> (pts s, RGB), and receive times."""

    endpoint: str
    frames: dict[int, tuple[float, np.ndarray]] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        from stream_denoise.subscribe import Subscriber

        self._sub = Subscriber(self.endpoint, rcvhwm=100000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._sub.recv(timeout=0.2)
            if msg is not None:
                self.frames[msg.seq] = (float(msg.header["pts"]), msg.rgb())
                self.times.append(time.monotonic())

    def max_gap_s(self, since: float = 0.0, until: float = float("inf")) -> float:
        """The longest wait between two received frames within [since, until] (monotonic times)."""
        ts = [t for t in self.times if since <= t <= until]
        return max(np.diff(ts), default=float("inf")) if len(ts) > 1 else float("inf")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sub.close()


def decode_ts(path: Path) -> list[tuple[float, np.ndarray]]:
    """Every decodable frame of a recorded stream: (pts in s, (H, W, 3) uint8 RGB), in order."""
    import av

    out = []
    with av.open(str(path)) as c:
        for packet in c.demux(video=0):
            try:
                frames = packet.decode()
            except av.FFmpegError:  # a recording cut off by a killed server ends mid-frame
                continue
            out += [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in frames if f.pts is not None]
    return out


def ffmpeg_pull(url: str, frames: int, out: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """An independent client: ffmpeg over RTSP/TCP, ``frames`` frames copied (not re-encoded) to ``out``."""
    return subprocess.run(["ffmpeg", "-v", "error", "-rtsp_transport", "tcp", "-timeout", "10000000", "-i", url,
                           "-frames:v", str(frames), "-c", "copy", "-f", "mpegts", "-y", str(out)],
                          capture_output=True, text=True, timeout=timeout)


def ffprobe(url: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_entries",
                           "stream=codec_name,width,height,has_b_frames,pix_fmt,color_space", "-of", "default=nw=1",
                           url], capture_output=True, text=True, timeout=timeout)


def gst_pull(url: str, seconds: float, out: Path, codec: str = "h264", user: str | None = None,
             password: str | None = None) -> subprocess.CompletedProcess:
    """An independent client: a GStreamer ``rtspsrc`` pipeline for ``seconds``, depayloaded into ``out``
    (``buffer-mode=none``: timestamps from RTP alone, not re-timed by arrival); its output carries
    rtspsrc's warnings (what the server said or did when the client fails)."""
    auth = f" user-id={user} user-pw={password}" if user else ""
    cmd = (f"gst-launch-1.0 -e -q rtspsrc location={url} protocols=tcp latency=100 buffer-mode=none{auth} "
           f"! rtp{codec}depay ! {codec}parse ! mpegtsmux ! filesink location={out}")
    env = {**os.environ, "GST_DEBUG": "rtspsrc:2", "GST_DEBUG_NO_COLOR": "1"}
    proc = subprocess.Popen(cmd.split(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)
    time.sleep(seconds)
    os.killpg(proc.pid, signal.SIGINT)  # -e: EOS, the file is finished
    try:
        stdout, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate(timeout=10)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, "")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / mse) if mse > 0 else 99.0


@dataclass
class Match:
    seqs: list[int]  # the published frame (ZeroMQ seq) each decoded frame shows
    psnr: list[float]
    pts_error_s: list[float]  # decoded pts minus the published pts, relative to the first frame

    @property
    def expected(self) -> int:
        """Frames published from the first decoded frame's to the last's."""
        return self.seqs[-1] - self.seqs[0] + 1


def match(decoded: list[tuple[float, np.ndarray]], published: dict[int, tuple[float, np.ndarray]],
          search: int = 3) -> Match:
    """Which published frame each decoded frame is: the first by content over everything published,
    each next one by content among the published frames within ``search`` of where its pts puts it.
    A looping camera repeats its pictures, not its timing: of the published frames that look like
    the first decoded one (within 1 dB of the best), the start whose timing fits best wins."""
    seqs = sorted(published)
    scores = {s: psnr(decoded[0][1], published[s][1]) for s in seqs}
    best = max(scores.values())
    starts = [s for s in seqs if scores[s] >= best - 1.0]
    return min((_follow(decoded, published, seqs, s, search) for s in starts), key=_timing_misfit)


def _timing_misfit(m: Match) -> float:
    """How unevenly the decoded timing follows the published one (robust to one bad timestamp)."""
    e = np.asarray(m.pts_error_s)
    return float(np.median(np.abs(e - np.median(e))))


def _follow(decoded: list[tuple[float, np.ndarray]], published: dict[int, tuple[float, np.ndarray]],
            seqs: list[int], first: int, search: int) -> Match:
    pts0, img0 = decoded[0]
    ref = published[first][0]
    out_seqs, out_psnr, errors = [first], [psnr(img0, published[first][1])], [0.0]
    pos = seqs.index(first)
    for pts, img in decoded[1:]:
        target = ref + (pts - pts0)
        guess = min(range(pos, len(seqs)), key=lambda i: abs(published[seqs[i]][0] - target), default=pos)
        window = [seqs[i] for i in range(max(pos, guess - search), min(len(seqs), guess + search + 1))]
        best = max(window, key=lambda s: psnr(img, published[s][1]))
        out_seqs.append(best)
        out_psnr.append(psnr(img, published[best][1]))
        errors.append((pts - pts0) - (published[best][0] - ref))
        pos = seqs.index(best)
    return Match(out_seqs, out_psnr, errors)


SOAK_CONFIG = """
status_interval_s = 5
metrics_port = {metrics_port}

[model]
model = "lite"
backend = "onnxruntime"

[publish]
endpoint = "{endpoint}"
sndhwm = 10000

[[cameras]]
name = "front"
source = "{source}"
[cameras.rtsp_out]
port = {rtsp_port}

[[cameras]]
name = "back"
source = "{source}"
[cameras.rtsp_out]
url = "{push_url}"
"""


@dataclass
class Soak:
    """What :func:`soak` saw: cycles run, viewer pulls, seconds from each media server return to the
    first recorded byte, RSS samples ``(s since start, MB)``, the longest ZeroMQ gap, the last /metrics."""

    cycles: int
    pulls: int
    resumed_s: list[float]
    rss: list[tuple[float, float]]
    max_gap_s: float
    metrics: dict[str, float]


def soak(source: str, record: RecordServer, workdir: Path, seconds: float, cycle_s: float = 20) -> Soak:
    """Two cameras of ``source`` in one `run` (multi-camera config): "front" served over RTSP, "back"
    pushed to ``record``. For ``seconds``, each cycle a viewer pulls 30 frames of "front", the media
    server is killed and back 2 s later, and RSS is sampled every 2 s until the cycle's end."""
    endpoint, metrics_port, rtsp_port = f"ipc://{workdir / 'soak-pub'}", free_port(), free_port()
    cfg = workdir / "soak.toml"
    cfg.write_text(SOAK_CONFIG.format(metrics_port=metrics_port, endpoint=endpoint, source=source, rtsp_port=rtsp_port,
                                      push_url=record.url))
    pub = Published(endpoint)
    run = Run(["--config", str(cfg)], workdir / "soak-run.log")
    sent_back = 'camera_rtsp_sent{camera="back"}'
    rss: list[tuple[float, float]] = []
    resumed: list[float] = []
    cycle = pulls = 0
    try:
        deadline = time.monotonic() + 120
        while run.alive() and run.metrics(metrics_port).get(sent_back, 0) < 30 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert run.alive() and run.metrics(metrics_port)[sent_back] >= 30, run.output()[-3000:]
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            cycle += 1
            got = ffmpeg_pull(f"rtsp://127.0.0.1:{rtsp_port}/front", 30, workdir / "soak-pull.ts")
            assert got.returncode == 0, got.stderr
            pulls += 1
            record.kill()
            time.sleep(2)
            record.start()
            back, files = time.monotonic(), len(record.files())
            while not (len(record.files()) > files and record.files()[-1].stat().st_size) and time.monotonic() < back + 15:
                time.sleep(0.05)
            resumed.append(time.monotonic() - back)
            for old in record.files()[:-1]:
                old.unlink()  # a long soak would fill the disk
            while time.monotonic() - start < cycle * cycle_s:
                rss.append((time.monotonic() - start, run.rss_mb()))
                time.sleep(2)
        metrics = run.metrics(metrics_port)
        gap = pub.max_gap_s(start, time.monotonic())
    finally:
        code = run.stop()
        pub.close()
    assert code == 0, run.output()[-3000:]
    return Soak(cycle, pulls, resumed, rss, gap, metrics)
