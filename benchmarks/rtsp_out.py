"""The RTSP output (`run --rtsp-out`): added latency, and a soak with faults.

    python -m benchmarks.rtsp_out [--sizes 640x360,1280x720] [--frames 300] [--soak-minutes 0]

Latency (serve mode): frames of real footage (clean bikes, resized) carrying their number in a
corner are handed to the RTSP output at 30 fps (``RtspOutput.send``, as the publish stage does) while
a client on this host (PyAV/FFmpeg over RTSP/TCP, low-delay flags) reads the stream. Per frame:
the encode time, *send -> packet at the client* (queue, encode, pipe, gst-rtsp-server, TCP: what the
RTSP output adds), the client's decode, and *send -> decoded picture*. The first 60 frames are
warm-up. With ``--soak-minutes N``: two cameras in one `run` (one served, one pushed to a RECORD
server that is killed and restarted every 20 s, a viewer pulling in between), RSS sampled.
Writes benchmarks/results/rtsp_out.json and rewrites BENCHMARKS.md. Needs the GStreamer RTSP
server packages (as the tests).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from . import RESULTS_DIR, ROOT

WARMUP = 60
CODE_BITS, CELL = 16, 16  # the frame number: 16 black/white cells of 16x16 pixels, top left


def stamp(pixels: np.ndarray, n: int) -> np.ndarray:
    out = pixels.copy()
    for b in range(CODE_BITS):
        out[:CELL, b * CELL:(b + 1) * CELL] = 255 if (n >> b) & 1 else 0
    return out


def read_stamp(pixels: np.ndarray) -> int:
    cells = pixels[2:CELL - 2, : CODE_BITS * CELL].reshape(CELL - 4, CODE_BITS, CELL, 3)[:, :, 2:-2]
    return sum(1 << b for b, v in enumerate(cells.mean(axis=(0, 2, 3))) if v > 128)


class RawRtspClient:
    """The least an RTSP client can do, over TCP (interleaved RTP): DESCRIBE, SETUP, PLAY, then H.264
    access units (RFC 6184: single NAL units, STAP-A, FU-A), each complete at its RTP marker bit. No
    parser, no buffering: what it measures is the server's latency, not a player's."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        import socket
        from urllib.parse import urlsplit

        u = urlsplit(url)
        self.url, self.cseq = url, 0
        self.sock = socket.create_connection((u.hostname, u.port or 554), timeout=timeout)
        self.file = self.sock.makefile("rb")
        sdp = self.request("DESCRIBE", url, "Accept: application/sdp\r\n")[1]
        control = next(line.split(":", 1)[1] for line in sdp.decode().splitlines() if line.startswith("a=control:") and
                       line.strip() != "a=control:*")
        track = control if "://" in control else f"{url.rstrip('/')}/{control}"
        headers = self.request("SETUP", track, "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n")[0]
        session = headers["session"].split(";")[0]
        self.request("PLAY", url, f"Session: {session}\r\nRange: npt=0.000-\r\n")

    def request(self, method: str, uri: str, extra: str = "") -> tuple[dict[str, str], bytes]:
        self.cseq += 1
        self.sock.sendall(f"{method} {uri} RTSP/1.0\r\nCSeq: {self.cseq}\r\n{extra}\r\n".encode())
        while True:
            status = self.file.readline()
            if status.startswith(b"$"):  # interleaved data before the reply: skip it
                self.file.read(int.from_bytes(status[2:4], "big") - len(status) + 4)
                continue
            headers = {}
            for line in iter(self.file.readline, b"\r\n"):
                k, _, v = line.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = self.file.read(int(headers.get("content-length", 0)))
            if b" 200 " not in status:
                raise RuntimeError(f"{method}: {status!r}")
            return headers, body

    def access_units(self) -> Iterator[bytes]:
        """H.264 access units in Annex B, each yielded as its last RTP packet arrives."""
        au = bytearray()
        while True:
            head = self.file.read(4)
            if len(head) < 4:
                return
            if head[0] != 0x24:  # an RTSP message (e.g. a keep-alive reply): skip its header lines
                while self.file.readline() not in (b"\r\n", b""):
                    pass
                continue
            data = self.file.read(int.from_bytes(head[2:4], "big"))
            if head[1] != 0 or len(data) < 12:
                continue  # RTCP
            offset = 12 + 4 * (data[0] & 0x0F)
            if data[0] & 0x10:  # header extension
                offset += 4 + 4 * int.from_bytes(data[offset + 2:offset + 4], "big")
            payload, nal = data[offset:], data[offset] & 0x1F
            if nal == 24:  # STAP-A
                i = 1
                while i + 2 <= len(payload):
                    n = int.from_bytes(payload[i:i + 2], "big")
                    au += b"\0\0\0\1" + payload[i + 2:i + 2 + n]
                    i += 2 + n
            elif nal == 28:  # FU-A
                if payload[1] & 0x80:
                    au += b"\0\0\0\1" + bytes([(payload[0] & 0xE0) | (payload[1] & 0x1F)])
                au += payload[2:]
            else:
                au += b"\0\0\0\1" + payload
            if data[1] & 0x80:  # marker: the access unit is complete
                yield bytes(au)
                au.clear()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _raw_client(url: str, got: dict[int, tuple[float, float]], ready: threading.Event, stop: threading.Event) -> None:
    """Frame number -> (access unit complete, picture decoded), perf_counter s, until ``stop``."""
    import av

    client = RawRtspClient(url)
    decoder = av.CodecContext.create("h264", "r")
    decoder.thread_count = 1
    ready.set()
    try:
        for au in client.access_units():
            t_packet = time.perf_counter()
            for frame in decoder.decode(av.Packet(au)):
                got.setdefault(read_stamp(frame.to_ndarray(format="rgb24")), (t_packet, time.perf_counter()))
            if stop.is_set():
                return
    finally:
        client.close()


def _ffmpeg_client(url: str, got: dict[int, tuple[float, float]], ready: threading.Event, stop: threading.Event) -> None:
    """The same through FFmpeg's RTSP demuxer (what Frigate and go2rtc's ffmpeg sources use); its H.264
    parser holds each access unit until the next one starts."""
    import av

    opts = {"rtsp_transport": "tcp", "fflags": "nobuffer", "flags": "low_delay", "probesize": "32",
            "analyzeduration": "0", "max_delay": "0"}
    with av.open(url, options=opts, timeout=(15, 5)) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_count = 1
        ready.set()
        for packet in c.demux(stream):
            t_packet = time.perf_counter()
            for frame in packet.decode():
                got.setdefault(read_stamp(frame.to_ndarray(format="rgb24")), (t_packet, time.perf_counter()))
            if stop.is_set():
                return


Client = Callable[[str, dict[int, tuple[float, float]], threading.Event, threading.Event], None]
CLIENTS: dict[str, Client] = {"raw": _raw_client, "ffmpeg": _ffmpeg_client}


def latency(width: int, height: int, frames: int, fps: float, client_name: str) -> dict:
    import cv2

    from stream_denoise.config import RtspOutConfig
    from stream_denoise.frame import Frame
    from stream_denoise.rtsp_out import open_outputs

    from .clips import load_clean

    clean = load_clean("bikes", 120)
    pictures = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in clean]
    (out,) = open_outputs([(RtspOutConfig(port=0), "bench", lambda: fps)])
    sent: dict[int, float] = {}
    got: dict[int, tuple[float, float]] = {}
    ready, stop = threading.Event(), threading.Event()

    def feed() -> None:
        t0 = time.perf_counter()
        for i in range(frames + WARMUP):
            if stop.is_set():
                return
            f = Frame(stamp(pictures[i % len(pictures)], i), i, i / fps, time.time(), "bench")
            sent[i] = time.perf_counter()
            out.send(f)
            time.sleep(max(0.0, t0 + (i + 1) / fps - time.perf_counter()))

    feeder = threading.Thread(target=feed)
    feeder.start()  # frames flow before the client asks: the server needs one to describe the stream
    client = threading.Thread(target=CLIENTS[client_name], args=(out.url, got, ready, stop), daemon=True)
    client.start()
    try:
        feeder.join()
        time.sleep(1.0)
    finally:
        stop.set()
        feeder.join()
        client.join(timeout=10)
        out.close()
    timed = [i for i in sorted(got) if i >= WARMUP and i in sent]
    serve = [1000 * (got[i][0] - sent[i]) for i in timed]
    decode = [1000 * (got[i][1] - got[i][0]) for i in timed]
    viewer = [1000 * (got[i][1] - sent[i]) for i in timed]
    enc = [1000 * v for v in out.encode_ms.values()]
    pct = lambda v, q: float(np.percentile(v, q)) if v else float("nan")  # noqa: E731
    return {"size": [width, height], "client": client_name, "fps": fps, "frames_timed": len(timed), "frames_sent": out.sent,
            "dropped": out.dropped, "bytes": out.bytes, "kbps": out.bytes * 8 / 1000 / ((frames + WARMUP) / fps),
            "encode_ms": [pct(enc, 50), pct(enc, 99)], "send_to_packet_ms": [pct(serve, 50), pct(serve, 99)],
            "client_decode_ms": [pct(decode, 50), pct(decode, 99)], "send_to_picture_ms": [pct(viewer, 50), pct(viewer, 99)]}


def run_soak(minutes: float) -> dict:
    from tests.rtsp_out_helpers import SYSTEM_PYTHON, RecordServer, free_port, soak, spawn_ready

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "recorded").mkdir()
        port = free_port()
        camera = spawn_ready([SYSTEM_PYTHON, str(ROOT / "tests" / "rtsp_server.py"),
                              str(ROOT / "stream_denoise" / "data" / "sample_noisy.mp4"), str(port)], work / "camera.log")
        record = RecordServer(work / "recorded", work / "record.log")
        record.start()
        try:
            s = soak(f"rtsp://127.0.0.1:{port}/stream", record, work, minutes * 60)
        finally:
            record.kill()
            camera.kill()
            camera.wait(timeout=10)
    rss = [mb for _, mb in s.rss]
    later = [(t, mb) for t, mb in s.rss if t >= 60] or s.rss
    slope = float(np.polyfit([t for t, _ in later], [mb for _, mb in later], 1)[0] * 60) if len(later) > 1 else 0.0
    keys = ("sent", "dropped", "reconnects")
    return {"minutes": minutes, "cycles": s.cycles, "viewer_pulls": s.pulls, "resumed_s": s.resumed_s,
            "rss_mb_first_last_max": [rss[0], rss[-1], max(rss)], "rss_slope_mb_per_min_after_1min": slope,
            "zeromq_max_gap_s": s.max_gap_s,
            "cameras": {cam: {k: s.metrics.get(f'camera_rtsp_{k}{{camera="{cam}"}}') for k in keys}
                        for cam in ("front", "back")}}


def main(argv: list[str] | None = None) -> int:
    from .report import machine_info, write

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="640x360,1280x720")
    p.add_argument("--frames", type=int, default=300, help="timed frames per size (after 60 of warm-up)")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--soak-minutes", type=float, default=0.0, help="also soak this long (0: no soak)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "rtsp_out.json")
    p.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    meta = machine_info() | {"command": "python -m benchmarks.rtsp_out " + shlex.join(argv if argv is not None else sys.argv[1:])}
    old = json.loads(a.out.read_text()) if a.out.exists() else {}
    result: dict = {"meta": meta, "latency": [], "soak": old.get("soak")}
    for size in a.sizes.split(","):
        w, h = (int(x) for x in size.lower().split("x"))
        for client in CLIENTS:
            row = latency(w, h, a.frames, a.fps, client)
            print(json.dumps(row))
            result["latency"].append(row)
    if a.soak_minutes > 0:
        result["soak"] = run_soak(a.soak_minutes) | {"meta": meta}
        print(json.dumps(result["soak"]))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(write(a.out.parent, a.md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
