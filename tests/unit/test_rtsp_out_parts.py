"""The RTSP output's parts: its config, flags and errors, the timeline, the encoder, the queue."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

from stream_denoise.config import RtspOutConfig, rtsp_path_for
from stream_denoise.config_file import check_config
from stream_denoise.errors import ConfigError, PublishError
from stream_denoise.frame import Frame
from tests.unit.test_cli_errors import SAMPLE, assert_one_line_error, cli


def frame(i: int, pts: float | None, segment: int = 0, size: tuple[int, int] = (96, 160)) -> Frame:
    rng = np.random.default_rng(i)
    pixels = np.full((*size, 3), 60, np.uint8)
    pixels[:, (4 * i) % (size[1] - 16):][:, :16] = 220
    pixels[: size[0] // 2] += rng.integers(0, 8, (size[0] // 2, size[1], 3), dtype=np.uint8)
    return Frame(pixels, i, pts, 1000.0 + i / 30, "cam", segment)


# -- config -----------------------------------------------------------------------------------------

def test_config_modes_and_checks():
    serve = RtspOutConfig()
    assert not serve.push and (serve.host, serve.port, serve.codec, serve.crf) == ("127.0.0.1", 8554, "h264", 18)
    assert RtspOutConfig(url="rtsp://user:pw@nvr:8554/cam").push
    for bad in ({"url": "http://nvr/cam"}, {"url": "rtsp://"}, {"username": "u"}, {"password": "p"},
                {"url": "rtsp://nvr/cam", "username": "u", "password": "p"}, {"path": "../etc"},
                {"path": "a b"}, {"gop_s": 0}, {"crf": 60}, {"preset": "Fast!"}):
        with pytest.raises(ValueError):
            RtspOutConfig(**bad)
    assert rtsp_path_for("front door") == "front-door" and rtsp_path_for(None) == "stream"
    assert rtsp_path_for("rtsp://u:p@cam/x") == "rtsp-u-p-cam-x"


DEPLOYMENT = """
[[cameras]]
name = "gate"
source = "rtsp://127.0.0.1:8554/gate"
[cameras.rtsp_out]
port = 8600

[[cameras]]
name = "yard"
source = "rtsp://127.0.0.1:8554/yard"
[cameras.rtsp_out]
port = 8600
{yard}
"""


def test_cameras_sharing_a_server(tmp_path: Path):
    path = tmp_path / "cams.toml"
    path.write_text(DEPLOYMENT.format(yard=""))
    cfg = check_config(path)
    assert [c.rtsp_out.port for c in cfg.cameras] == [8600, 8600]  # one server, /gate and /yard
    path.write_text(DEPLOYMENT.format(yard='path = "gate"'))
    with pytest.raises(ConfigError, match=r"cams.toml:\d+: cameras\[1\].rtsp_out.path: .*also served"):
        check_config(path)
    path.write_text(DEPLOYMENT.format(yard='username = "a"\npassword = "b"'))
    with pytest.raises(ConfigError, match="share it"):
        check_config(path)
    path.write_text(DEPLOYMENT.format(yard='url = "rtsp://nvr:8554/yard"'))
    assert check_config(path).cameras[1].rtsp_out.push


# -- command line: one line, non-zero, no traceback -----------------------------------------------

def run_sample(*args: str):
    return cli("run", "--source", str(SAMPLE), "--no-publish", "--model", "lite", "--backend", "onnxruntime", *args)


def test_flag_errors(tmp_path: Path):
    assert_one_line_error(run_sample("--rtsp-out", "http://nvr/cam"), "rtsp_out.url")
    assert_one_line_error(run_sample("--rtsp-out", "--rtsp-listen", "8554"), "--rtsp-listen", "HOST:PORT")
    assert_one_line_error(run_sample("--rtsp-crf", "20"), "need --rtsp-out")
    assert_one_line_error(run_sample("--rtsp-out", "--rtsp-crf", "99"), "rtsp_out.crf")
    cams = tmp_path / "cams.toml"
    cams.write_text(DEPLOYMENT.format(yard=""))
    assert_one_line_error(cli("run", "--config", str(cams), "--rtsp-out"), "--rtsp-out", "per camera")


def test_startup_errors(tmp_path: Path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        assert_one_line_error(run_sample("--rtsp-out", "--rtsp-listen", f"127.0.0.1:{port}"), "cannot listen", str(port))
    finally:
        taken.close()
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[source]\nuri = "{SAMPLE}"\n[rtsp_out]\ngst_python = "/nonexistent/python3"\n')
    assert_one_line_error(cli("run", "--config", str(cfg), "--no-publish", "--model", "lite"),
                          "gst-rtsp-server", "--rtsp-out rtsp://")
    cfg.write_text(f'[source]\nuri = "{SAMPLE}"\n[rtsp_out]\npreset = "warpspeed"\n')
    assert_one_line_error(cli("run", "--config", str(cfg), "--no-publish", "--model", "lite"), "libx264", "warpspeed")


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="an NVIDIA GPU is visible: NVENC may run")
def test_nvenc_without_a_gpu():
    assert_one_line_error(run_sample("--rtsp-out", "rtsp://127.0.0.1:9/cam", "--rtsp-encoder", "nvenc"),
                          "h264_nvenc", "GPU")


# -- timeline and encoder -------------------------------------------------------------------------------

def test_timeline_keeps_the_source_timing_and_bridges_discontinuities():
    from stream_denoise.rtsp_out.encoder import Timeline

    t = Timeline(30.0)
    src = [10.0, 10.033, 10.1, 10.133]  # a dropped frame leaves a gap of two
    out = [t.map(frame(i, p)) for i, p in enumerate(src)]
    assert out == [0, 2970, 9000, 11970]
    assert t.map(frame(4, 3.0, segment=1)) == 11970 + 3000  # reconnect: pts went back, one frame later
    assert t.map(frame(5, 3.0 + 1 / 30, segment=1)) == 14970 + 3000
    assert t.map(frame(6, 99.0, segment=1)) == 17970 + 3000  # a jump of over MAX_GAP_S
    assert t.map(frame(7, 99.000001, segment=1)) == 20971  # closer than a tick: still strictly increasing
    wall = Timeline(25.0)
    assert [wall.map(frame(i, None)) for i in range(3)] == [0, 3000, 6000]  # no pts: capture times


def test_encoder_low_latency_stream():
    import av

    from stream_denoise.rtsp_out.encoder import Encoder, choose_encoder, configure

    cfg = RtspOutConfig(gop_s=0.5)
    name = choose_encoder(cfg)
    assert name == ("h264_nvenc" if Path("/dev/nvidiactl").exists() else "libx264")
    ctx = av.CodecContext.create(name, "w")
    configure(ctx, cfg, name, 160, 96, 30.0)
    enc = Encoder(ctx, 160, 96)
    dec = av.CodecContext.create("h264", "r")
    keys, scores = [], []
    for i in range(40):
        f = frame(i, i / 30)
        packets = enc.encode(f, i * 3000, keyframe=(i == 22))
        assert len(packets) == 1 and packets[0].pts == i * 3000  # no delay, the pts given
        keys.append(packets[0].is_keyframe)
        for d in dec.decode(packets[0]):
            assert d.pict_type in (av.video.frame.PictureType.I, av.video.frame.PictureType.P)  # no B-frames
            rgb = d.to_ndarray(format="rgb24")
            scores.append(10 * np.log10(255**2 / np.mean((rgb.astype(float) - f.pixels) ** 2)))
    assert [i for i, k in enumerate(keys) if k] == [0, 15, 22, 37]  # every gop_s, and on request
    assert len(scores) == 40 and min(scores) > 40


# -- the output: never blocks, every frame accounted for ---------------------------------------------

def test_output_never_blocks_and_counts_what_it_cannot_send():
    from stream_denoise.rtsp_out import open_outputs

    with socket.socket() as s:  # a port nothing listens on: every connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = RtspOutConfig(url=f"rtsp://127.0.0.1:{port}/cam", backoff_initial_s=0.05, backoff_max_s=0.1)
    (out,) = open_outputs([(cfg, "cam", lambda: 30.0)])
    try:
        worst = 0.0
        for i in range(200):
            t0 = time.perf_counter()
            out.send(frame(i, i / 30))
            worst = max(worst, time.perf_counter() - t0)
            time.sleep(0.002)
        assert worst < 0.05
    finally:
        out.close()
    assert out.sent == 0 and out.dropped == 200 and out.idle == 0
    assert out.link.failures >= 2 and out.link.reconnects == 0
    assert out.status() == "rtsp down sent 0 dropped 200 reconnects 0"
    snap = out.snapshot()
    assert snap["rtsp_dropped"] == 200 and snap["rtsp_connected"] == 0


def test_serve_encodes_only_for_viewers(tmp_path: Path):
    from stream_denoise.rtsp_out import open_outputs
    from stream_denoise.rtsp_out.serve import find_gst_python

    try:
        find_gst_python(None)
    except PublishError as exc:
        pytest.skip(str(exc))
    (out,) = open_outputs([(RtspOutConfig(port=0, queue_size=64), "front door", None)])
    try:
        assert out.url.startswith("rtsp://127.0.0.1:") and out.url.endswith("/front-door")
        assert not out.url.endswith(":0/front-door")  # port 0: the port the server took
        for i in range(30):
            out.send(frame(i, i / 30))
        time.sleep(0.5)
    finally:
        out.close()
    assert (out.sent, out.dropped, out.idle) == (0, 0, 30)
    assert out.status() == "rtsp clients 0 sent 0 dropped 0 reconnects 0"


def test_odd_frame_sizes_lose_their_last_column_and_row():
    import av

    from stream_denoise.rtsp_out.encoder import Encoder, coded_size, configure

    f = frame(3, 0.1, size=(97, 161))
    assert coded_size(f) == (160, 96)
    ctx = av.CodecContext.create("libx264", "w")
    configure(ctx, RtspOutConfig(), "libx264", 160, 96, 25.0)
    (packet,) = Encoder(ctx, 160, 96).encode(f, 0)
    (decoded,) = av.CodecContext.create("h264", "r").decode(packet)
    rgb = decoded.to_ndarray(format="rgb24")
    assert rgb.shape == (96, 160, 3)
    assert 10 * np.log10(255**2 / np.mean((rgb.astype(float) - f.pixels[:96, :160]) ** 2)) > 40
