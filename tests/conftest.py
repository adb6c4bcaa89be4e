"""Shared fixtures. Each section has an owner; append new sections rather than editing others."""

from __future__ import annotations

import functools
import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

# =====================================================================================================
# Sources: generated clips and a real RTSP server (gst-rtsp-server under the system Python)
# =====================================================================================================

CLIP_SIZE = (160, 96)  # (width, height): multiples of 16 keep x264 simple
CLIP_FRAMES = 60
CLIP_FPS = 30
BAR_WIDTH = 8
SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def clip_pixels(i: int, width: int, height: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Frame ``i`` of a test clip: (H, W, 3) uint8 RGB, a bright bar at x = 2*i on a dark
    gradient, plus Gaussian noise of std ``noise``. :func:`frame_number` recovers ``i``."""
    img = np.empty((height, width, 3), np.float32)
    img[...] = np.linspace(30, 70, width, dtype=np.float32)[None, :, None]
    img[..., 0] += 20  # reddish background: a channel swap would be visible
    x = (2 * i) % (width - BAR_WIDTH)
    img[:, x : x + BAR_WIDTH] = 230
    img += rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def frame_number(pixels: np.ndarray) -> int:
    """The ``i`` of a decoded :func:`clip_pixels` frame (modulo the bar's travel)."""
    cols = pixels.astype(np.float32).mean(axis=(0, 2))
    box = np.convolve(cols, np.ones(BAR_WIDTH), mode="valid")
    return int(np.argmax(box)) // 2


def write_clip(
    path: Path,
    *,
    size: tuple[int, int] = CLIP_SIZE,
    frames: int = CLIP_FRAMES,
    fps: int = CLIP_FPS,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    noise: float = 10.0,
    content: Callable[[int], np.ndarray] | None = None,
    container_format: str | None = None,
) -> Path:
    """Encode a clip with PyAV and return ``path``. ``content(i)`` gives (H, W, 3) uint8 RGB frames."""
    import av

    width, height = size
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=fps)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "g": "15"}
        for i in range(frames):
            rgb = content(i) if content else clip_pixels(i, width, height, rng, noise)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 160x96, 60-frame, 30 fps H.264 mp4 of a moving bar plus noise (see :func:`frame_number`)."""
    return write_clip(tmp_path_factory.mktemp("media") / "clip.mp4")


@pytest.fixture(scope="session")
def make_clip(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make_clip(name, **write_clip_kwargs) -> Path`` in a session temp dir."""
    root = tmp_path_factory.mktemp("clips")
    return lambda name, **kw: write_clip(root / name, **kw)


@pytest.fixture(scope="session")
def clip_frame_number() -> Callable[[np.ndarray], int]:
    """:func:`frame_number`: which frame of a generated clip some decoded pixels show."""
    return frame_number


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@functools.cache
def _rtsp_server_unavailable() -> str | None:
    """Why the RTSP test server cannot run here, or None."""
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    try:
        if subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30).returncode == 0:
            return None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return (
        f"{SYSTEM_PYTHON} lacks gi/gst-rtsp-server (apt install python3-gi gir1.2-gst-rtsp-server-1.0 "
        "gstreamer1.0-plugins-ugly gstreamer1.0-libav)"
    )


class RtspServer:
    """A looping gst-rtsp-server process serving a clip at :attr:`url` (``rtsp://127.0.0.1:PORT/stream``)."""

    def __init__(self, clip: Path, log_path: Path, start_timeout_s: float = 20.0) -> None:
        self.clip, self.log_path, self.start_timeout_s = clip, log_path, start_timeout_s
        self.port = _free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/stream"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (same port) and wait for READY; fails the test if it does not come in time."""
        assert self.proc is None, "already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [SYSTEM_PYTHON, str(RTSP_SERVER_SCRIPT), str(self.clip), str(self.port)],
                stdout=subprocess.PIPE, stderr=log,
            )  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    line = self.proc.stdout.readline()
                    if line.strip() == b"READY":
                        return
                    if not line:  # exited
                        break
        self.kill()
        pytest.fail(f"RTSP server did not start: {self.log_path.read_text(errors='replace')[-2000:]}")

    def kill(self) -> None:
        """SIGKILL (a camera dropping off the network) and reap."""
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process must wake to die cleanly
                self.proc.kill()
            self.proc.wait(timeout=10)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stall(self) -> None:
        """SIGSTOP: the connection stays open but no data flows (a frozen camera)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`stall`."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def rtsp_server(clip: Path, tmp_path: Path) -> Iterator[RtspServer]:
    """A running :class:`RtspServer` looping ``clip``; use ``.url``, ``.kill()``, ``.restart()``,
    ``.stall()``, ``.resume()``. Killed at teardown. Skips when the system Python lacks gi."""
    reason = _rtsp_server_unavailable()
    if reason:
        pytest.skip(reason)
    server = RtspServer(clip, tmp_path / "rtsp_server.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


# =====================================================================================================
# (end of the sources section)
# =====================================================================================================


# =====================================================================================================
# RTSP output (issue 27): a RECORD-mode RTSP server (the push target), as a media server would be
# =====================================================================================================

@pytest.fixture
def record_server(tmp_path: Path) -> Iterator[object]:
    """A running ``tests.rtsp_out_helpers.RecordServer`` (push target, RTSP RECORD mode); killed at
    teardown. Skips without gi."""
    reason = _rtsp_server_unavailable()
    if reason:
        pytest.skip(reason)
    from tests.rtsp_out_helpers import RecordServer

    outdir = tmp_path / "recorded"
    outdir.mkdir()
    server = RecordServer(outdir, tmp_path / "record_server.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


# =====================================================================================================
# (end of the RTSP output section)
# =====================================================================================================
