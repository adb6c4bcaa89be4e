"""Fuzz and fault suite for `denoise` and `run`: generated corrupt, truncated and odd-format inputs.

Every case ends in one of two ways, never a traceback or a hang: exit 0 with exactly the frames the
input holds (as many as PyAV decodes from it), or one line ``stream-denoise: error: ...`` with a
non-zero exit, and then at most the frames that exist, in a finished file (no ``.part`` left).
The subscriber's message parser has its own property test (tests/unit/test_wire.py).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_denoise.train.data import read_clip
from tests.cli_helpers import run_cli

LITE = ("--model", "lite", "--backend", "onnxruntime")
SIZE = (64, 48)
FRAMES = 15


def frames_in(path: Path) -> int:
    """Frames PyAV decodes from ``path`` packet by packet, skipping what fails: what exists in it."""
    try:
        with av.open(str(path), metadata_errors="replace") as c:
            if not c.streams.video:
                return 0
            stream = c.streams.video[0]
            stream.thread_type = "SLICE"
            n = 0
            try:
                for packet in c.demux(stream):
                    try:
                        n += len(stream.decode(packet))
                    except (av.error.FFmpegError, ValueError):
                        pass
            except av.error.FFmpegError:
                pass
            return n
    except (av.error.FFmpegError, ValueError, OSError):
        return 0


def frames_out(out: Path) -> int:
    """Frames in ``out`` and in the files a resolution change continued it in (out.1.mkv, ...)."""
    files = [out, *sorted(out.parent.glob(f"{out.stem}.[0-9]*{out.suffix}"))]
    return sum(len(read_clip(p)) for p in files if p.exists())


def check(res: subprocess.CompletedProcess, out: Path, src: Path) -> str:
    """The contract of the module docstring; returns 'ok' or the error line."""
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert not list(out.parent.glob("*.part")), "a partial file was left behind"
    exists = frames_in(src)
    if res.returncode == 0:
        assert frames_out(out) == exists, (res.stderr[-2000:], exists)
        return "ok"
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("stream-denoise: error: "), res.stderr[-2000:]
    assert frames_out(out) <= exists
    if m := re.search(r"the (\d+) frames that decoded were written", lines[0]):
        assert frames_out(out) == int(m.group(1)) == exists
    return lines[0]


def denoise(src: Path, out: Path) -> subprocess.CompletedProcess:
    return run_cli("-q", "denoise", str(src), str(out), *LITE, timeout=120)


def run(src: Path, out: Path) -> subprocess.CompletedProcess:
    return run_cli("-q", "run", "--source", str(src), "--no-publish", "--output", str(out), *LITE, timeout=120)


def encode(path: Path, *, size: tuple[int, int] = SIZE, frames: int = FRAMES, codec: str = "libx264",
           pix_fmt: str = "yuv420p", fmt: str | None = None, options: dict[str, str] | None = None) -> Path:
    rng = np.random.default_rng(0)
    w, h = size
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        for i in range(frames):
            img = np.full((h, w, 3), 60, np.uint8)
            img[:, (3 * i) % w] = 220
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(s.encode(None))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Whole small clips by container, as bytes to damage."""
    root = tmp_path_factory.mktemp("fuzz")
    made = {"mp4": encode(root / "c.mp4"), "faststart.mp4": encode(root / "f.mp4", options={"movflags": "+faststart"}),
            "mkv": encode(root / "c.mkv"), "ts": encode(root / "c.ts", fmt="mpegts"),
            "avi": encode(root / "c.avi", codec="mjpeg", pix_fmt="yuvj420p")}
    return {k: p.read_bytes() for k, p in made.items()}


def damage(data: bytes, op: str, where: float, n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    at = int(where * len(data))
    b = bytearray(data)
    if op == "truncate":
        return bytes(b[:at])
    if op == "flip":
        for pos in rng.integers(0, len(b), n):
            b[pos] ^= 1 << int(rng.integers(0, 8))
        return bytes(b)
    if op == "zero":
        b[at : at + 64 * n] = bytes(len(b[at : at + 64 * n]))
        return bytes(b)
    if op == "garbage":
        return bytes(b[:at]) + rng.integers(0, 256, 32 * n, dtype=np.uint8).tobytes() + bytes(b[at:])
    assert op == "drop"
    return bytes(b[:at]) + bytes(b[at + 64 * n :])


@settings(max_examples=14, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(["mp4", "faststart.mp4", "mkv", "ts", "avi"]),
       op=st.sampled_from(["truncate", "flip", "zero", "garbage", "drop"]),
       where=st.floats(0.0, 1.0), n=st.integers(1, 64), seed=st.integers(0, 2**16))
def test_damaged_files_give_their_frames_or_one_line(clips: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory,
                                                     kind: str, op: str, where: float, n: int, seed: int) -> None:
    d = tmp_path_factory.mktemp("case")
    src = d / f"in.{kind.split('.')[-1]}"
    src.write_bytes(damage(clips[kind], op, where, n, seed))
    check(denoise(src, d / "out.mkv"), d / "out.mkv", src)


def _odd(tmp: Path) -> dict[str, Callable[[], Path]]:
    def concat() -> Path:
        a, b = encode(tmp / "a.h264", fmt="h264"), encode(tmp / "b.h264", size=(48, 32), fmt="h264")
        (tmp / "both.h264").write_bytes(a.read_bytes() + b.read_bytes())
        return tmp / "both.h264"

    def text() -> Path:
        (tmp / "notes.mp4").write_text("not a video\n" * 20)
        return tmp / "notes.mp4"

    def empty() -> Path:
        (tmp / "empty.mkv").write_bytes(b"")
        return tmp / "empty.mkv"

    def audio() -> Path:
        with av.open(str(tmp / "tone.mka"), "w") as c:
            s = c.add_stream("pcm_s16le", rate=8000)
            for i in range(10):
                f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
                f.sample_rate, f.pts = 8000, i * 800
                c.mux(s.encode(f))
            c.mux(s.encode(None))
        return tmp / "tone.mka"

    def png() -> Path:
        import cv2

        cv2.imwrite(str(tmp / "still.png"), np.full((40, 30, 3), 128, np.uint8))
        (tmp / "still.mp4").write_bytes((tmp / "still.png").read_bytes())
        return tmp / "still.mp4"

    def cut_faststart() -> Path:
        whole = encode(tmp / "fs.mp4", options={"movflags": "+faststart"}).read_bytes()
        index_end = whole.index(b"mdat") + 4  # the index (moov) and no frame: "wrote 0 frames" used to exit 0
        (tmp / "prefix.mp4").write_bytes(whole[:index_end])
        return tmp / "prefix.mp4"

    def cut_mkv() -> Path:
        whole = encode(tmp / "whole.mkv", frames=24).read_bytes()
        (tmp / "half.mkv").write_bytes(whole[: len(whole) // 2])  # frames missing at the end: used to exit 0 silently
        return tmp / "half.mkv"

    return {
        "1x1": lambda: encode(tmp / "1x1.mkv", size=(1, 1), codec="ffv1", pix_fmt="bgr0"),
        "2x2": lambda: encode(tmp / "2x2.mkv", size=(2, 2), codec="ffv1", pix_fmt="bgr0"),
        "33x17": lambda: encode(tmp / "odd.mkv", size=(33, 17), codec="ffv1", pix_fmt="bgr0"),
        "one-frame": lambda: encode(tmp / "one.mp4", frames=1),
        "gray": lambda: encode(tmp / "gray.mkv", codec="ffv1", pix_fmt="gray"),
        "10-bit": lambda: encode(tmp / "p10.mkv", codec="ffv1", pix_fmt="yuv420p10le"),
        "16-bit rgb": lambda: encode(tmp / "rgb48.mkv", codec="ffv1", pix_fmt="gbrp16le"),
        "yuv444 h264": lambda: encode(tmp / "444.mp4", pix_fmt="yuv444p"),
        "vp9 webm": lambda: encode(tmp / "v.webm", codec="libvpx-vp9"),
        "mjpeg avi": lambda: encode(tmp / "m.avi", codec="mjpeg", pix_fmt="yuvj420p"),
        "size change": concat, "text": text, "empty": empty, "audio only": audio, "png named mp4": png,
        "faststart prefix": cut_faststart, "truncated mkv": cut_mkv,
    }


ODD = list(_odd(Path(".")))
EXPECTED_ERRORS = {"text": "cannot open", "empty": "cannot open", "audio only": "no video stream",
                   "faststart prefix": "no frame could be decoded", "truncated mkv": "truncated",
                   "size change": "frame size changes"}


@pytest.mark.parametrize("case", ODD)
def test_odd_inputs_to_denoise(case: str, tmp_path: Path) -> None:
    src = _odd(tmp_path)[case]()
    result = check(denoise(src, tmp_path / "out.mkv"), tmp_path / "out.mkv", src)
    assert (EXPECTED_ERRORS.get(case) or "ok") in result


@pytest.mark.parametrize("case", ["1x1", "16-bit rgb", "size change", "audio only", "faststart prefix", "truncated mkv"])
def test_odd_inputs_to_run(case: str, tmp_path: Path) -> None:
    src = _odd(tmp_path)[case]()
    result = check(run(src, tmp_path / "out.mkv"), tmp_path / "out.mkv", src)
    if case in ("audio only", "faststart prefix"):
        assert result != "ok"
