"""Encoding for the RTSP output: which encoder, its low-latency settings, frames in, packets out.

Every encoder (x264/x265 in software, NVENC) is set up by :func:`configure` the same way: no
B-frames, a keyframe every ``gop_s`` seconds and on request (a client joined), constant quality
(``crf``) or a bit rate capped over one second, 4:2:0 BT.709 limited range (tagged, so players
convert the colours back the same way), and RTP's 1/90000 s clock as time base. x264 and x265 run
with ``tune=zerolatency``: one packet out per frame in, no look-ahead, sliced threads.
"""

from __future__ import annotations

import functools
import logging
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, VideoReformatter

from ..config import RtspOutConfig
from ..errors import PublishError
from ..frame import Frame

log = logging.getLogger(__name__)

CLOCK_HZ = 90_000  # RTP's video clock: output timestamps are in 1/90000 s
TIME_BASE = Fraction(1, CLOCK_HZ)
DEFAULT_FPS = 25.0
MAX_GAP_S = 5.0  # a larger jump of the source's pts is a discontinuity, bridged by one frame
SOFTWARE = {"h264": "libx264", "h265": "libx265"}
NVENC = {"h264": "h264_nvenc", "h265": "hevc_nvenc"}
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_BT709 = 1  # AVCOL_PRI_BT709 = AVCOL_TRC_BT709 = AVCOL_SPC_BT709
_MPEG_RANGE = 1  # AVCOL_RANGE_MPEG (limited, 16-235)


def nvidia_visible() -> bool:
    return Path("/dev/nvidiactl").exists()


def choose_encoder(cfg: RtspOutConfig) -> str:
    """The FFmpeg encoder for ``cfg`` (``libx264``, ``hevc_nvenc``, ...); raises PublishError with one
    line when the one asked for cannot run here. ``auto`` takes NVENC only where it opens."""
    return _choose(cfg.codec, cfg.encoder, cfg.preset)


@functools.cache
def _choose(codec: str, encoder: str, preset: str) -> str:
    if encoder == "software" or (encoder == "auto" and not nvidia_visible()):
        name = SOFTWARE[codec]
        _probe(name, RtspOutConfig.model_validate({"codec": codec, "encoder": "software", "preset": preset}))
        return name
    name = NVENC[codec]
    try:
        _probe(name, RtspOutConfig.model_validate({"codec": codec, "encoder": "nvenc", "preset": _nvenc_preset(preset)}))
        return name
    except PublishError as exc:
        if encoder == "nvenc":
            raise
        log.info("rtsp-out: %s; using the software encoder %s", exc, SOFTWARE[codec])
        return _choose(codec, "software", preset)


def _probe(name: str, cfg: RtspOutConfig) -> None:
    """Open ``name`` at a small size (the settings are checked as well); PublishError if it fails."""
    if name not in av.codecs_available:
        raise PublishError(f"rtsp-out: this FFmpeg (PyAV's) has no encoder {name}")
    if name in SOFTWARE.values() and cfg.preset not in X26X_PRESETS:  # x264 would print its own complaint
        raise PublishError(f"rtsp-out: {name} has no preset {cfg.preset!r} (use one of {', '.join(X26X_PRESETS)})")
    try:
        ctx = av.CodecContext.create(name, "w")
        configure(ctx, cfg, name, 256, 144, DEFAULT_FPS)
        ctx.open()
    except (av.FFmpegError, ValueError) as exc:
        hint = " (no NVIDIA GPU or driver here?)" if "nvenc" in name else ""
        why = getattr(exc, "strerror", None) or str(exc)
        raise PublishError(f"rtsp-out: encoder {name} cannot run with these settings (preset {cfg.preset!r}): "
                           f"{why}{hint}") from None


def _nvenc_preset(preset: str) -> str:
    return preset if preset.startswith("p") and preset[1:].isdigit() else "p2"


def encoder_options(cfg: RtspOutConfig, name: str, gop: int) -> dict[str, str]:
    """The private options of encoder ``name`` for low latency and the configured quality."""
    rate = cfg.bitrate_kbps
    if name in ("libx264", "libx265"):
        opts = {"preset": cfg.preset, "tune": "zerolatency", "forced-idr": "1"}
        if name == "libx264":
            opts.update(bf="0", g=str(gop), keyint_min=str(gop), sc_threshold="0")
            if rate is not None:
                opts.update(maxrate=f"{rate}k", bufsize=f"{rate}k")
            else:
                opts["crf"] = str(cfg.crf)
        else:
            params = f"bframes=0:keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1:log-level=error"
            if rate is not None:
                params += f":vbv-maxrate={rate}:vbv-bufsize={rate}"
            else:
                opts["crf"] = str(cfg.crf)
            opts["x265-params"] = params
        return opts
    # NVENC: ultra-low-latency tuning, no B-frames, headers with every IDR
    opts = {"preset": _nvenc_preset(cfg.preset), "tune": "ull", "zerolatency": "1", "bf": "0", "g": str(gop),
            "forced-idr": "1", "delay": "0"}
    if rate is not None:
        opts.update(rc="cbr", maxrate=f"{rate}k", bufsize=f"{rate}k")
    else:
        opts.update(rc="vbr", cq=str(cfg.crf))
    return opts


def configure(ctx: Any, cfg: RtspOutConfig, name: str, width: int, height: int, fps: float) -> None:
    """Set up an unopened video encoder context (standalone, or a muxer stream's) for the stream."""
    gop = max(1, round(cfg.gop_s * fps))
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = TIME_BASE
    ctx.framerate = Fraction(fps).limit_denominator(1001)
    ctx.gop_size = gop
    ctx.max_b_frames = 0
    ctx.color_primaries = ctx.color_trc = ctx.colorspace = _BT709
    ctx.color_range = _MPEG_RANGE
    if cfg.bitrate_kbps is not None:
        ctx.bit_rate = cfg.bitrate_kbps * 1000
    if name in SOFTWARE.values():
        ctx.thread_count = cfg.threads
        if cfg.threads != 1:
            ctx.thread_type = "SLICE"  # frame threads would add a frame of delay per thread
    ctx.options = encoder_options(cfg, name, gop)


def coded_size(frame: Frame) -> tuple[int, int]:
    """(width, height) of the stream for ``frame``: even (4:2:0), an odd last column or row left out."""
    return frame.width & ~1, frame.height & ~1


class Encoder:
    """Frames (H, W, 3) uint8 RGB in, compressed packets out, one per frame (no delay).

    ``target`` is an opened-on-first-use encoder, of :func:`coded_size`: a standalone ``CodecContext``
    or a muxer's video stream (whose packets then carry that stream). ``encode_ms`` holds the last
    frame's time.
    """

    def __init__(self, target: Any, width: int, height: int) -> None:
        self.target, self.width, self.height = target, width, height
        self._reformatter = VideoReformatter()
        self.encode_ms = 0.0
        self.frames = 0

    def encode(self, frame: Frame, pts: int, keyframe: bool = False) -> list[av.Packet]:
        """``pts`` in 1/90000 s; ``keyframe`` forces an IDR (with SPS/PPS in band, or in the SDP)."""
        t0 = time.perf_counter()
        pixels = frame.pixels
        if pixels.shape[:2] != (self.height, self.width):
            pixels = np.ascontiguousarray(pixels[: self.height, : self.width])
        rgb = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        yuv = self._reformatter.reformat(rgb, format="yuv420p", dst_colorspace=Colorspace.ITU709,
                                         dst_color_range=ColorRange.MPEG)
        yuv.pts, yuv.time_base = pts, TIME_BASE
        if keyframe or self.frames == 0:
            yuv.pict_type = av.video.frame.PictureType.I
        packets = self.target.encode(yuv)
        self.frames += 1
        self.encode_ms = 1000 * (time.perf_counter() - t0)
        return packets

    def flush(self) -> list[av.Packet]:
        try:
            return self.target.encode(None)
        except (av.FFmpegError, ValueError):
            return []


class Timeline:
    """Output timestamps (1/90000 s) for frames: the source's own spacing within a segment, one
    frame duration across a discontinuity (reconnect, loop, pts going back or jumping more than
    MAX_GAP_S); always strictly increasing. Frames without pts use their capture time."""

    def __init__(self, fps: float) -> None:
        self.step = max(1, round(CLOCK_HZ / fps))
        self._last: tuple[int, float, int] | None = None  # segment, source time (s), output pts

    def map(self, frame: Frame) -> int:
        t = frame.pts if frame.pts is not None else frame.captured_at
        if self._last is None:
            out = 0
        else:
            segment, last_t, last_out = self._last
            dt = t - last_t
            same = segment == frame.segment and 0 < dt <= MAX_GAP_S
            out = max(last_out + (round(dt * CLOCK_HZ) if same else self.step), last_out + 1)
        self._last = (frame.segment, t, out)
        return out
