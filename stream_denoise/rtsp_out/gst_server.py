"""The RTSP server behind ``--rtsp-out`` (serve mode): gst-rtsp-server fed with encoded video.

Run by :mod:`stream_denoise.rtsp_out.serve` under a Python that has GStreamer's ``gi`` bindings
(usually the system's ``/usr/bin/python3``: Debian's ``python3-gi gir1.2-gst-rtsp-server-1.0``);
it imports only the standard library and ``gi``, never the package (which that Python lacks)::

    PYTHON gst_server.py --host 127.0.0.1 --port 8554 --codec h264 --mount cam1 [--mount cam2 ...]

Basic authentication when ``STREAM_DENOISE_RTSP_USER`` / ``STREAM_DENOISE_RTSP_PASSWORD`` are set
(environment, not argv: argv is visible to every user in ``ps``).

stdin carries records, each a :data:`HEADER` (magic ``SD``, kind, flags, mount index, payload
length, pts in ns) and its payload: kind ``P`` is one access unit (Annex B, SPS/PPS in band before
each IDR), flag 1 marks a keyframe. End of stdin (the parent closed it or died) ends the streams
and stops the server.
stdout carries lines for the parent: ``READY``; ``WANT <mount> <0|1>`` when a mount's media starts
(a client asked for it: encode, starting with a keyframe) or ends (nobody watches: stop encoding);
``KEY <mount>`` when another client joins a running media (it needs a keyframe);
``CLIENTS <mount> <n>``; ``ERROR <message>`` before a non-zero exit.

Each mount is one *shared* media (any number of clients, one pipeline): ``appsrc ! h26Xparse !
rtph26Xpay``. Buffers keep the encoder's timestamps (the source's clock), anchored to the media's
running time at its first buffer.
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import sys
import threading

from typing import Any

# gi is imported by main() (_load_gi): the parent process imports this module for the constants below
Gst: Any = None
GLib: Any = None
GstRtspServer: Any = None

HEADER = struct.Struct("<2sBBHIq")  # magic, kind, flags, mount, length, pts_ns
MAGIC = b"SD"
KIND_PACKET = ord("P")
FLAG_KEY = 1
MAX_PAYLOAD = 64 << 20
END_GRACE_MS = 300  # after the end of input: time for the end of stream to reach the clients
ROLE = "viewer"
PIPELINES = {
    "h264": "h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1",
    "h265": "h265parse ! rtph265pay name=pay0 pt=96 config-interval=-1",
}


_say_lock = threading.Lock()


def say(line: str) -> None:
    """One line to the parent (from GStreamer's threads as well as the main loop)."""
    with _say_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Mount:
    """One path of the server: its factory, the appsrc of its live media (None when nobody watches)."""

    def __init__(self, index: int, path: str, codec: str) -> None:
        self.index, self.path = index, path
        self.lock = threading.Lock()
        self.appsrc: Gst.Element | None = None
        self.pipeline: Gst.Element | None = None
        self.offset: int | None = None  # running time - source pts, set at the media's first buffer
        self.clients: list[Any] = []  # the RTSPClient wrappers themselves: a kept wrapper keeps its identity
        self.factory = GstRtspServer.RTSPMediaFactory()
        caps = f"video/x-{codec},stream-format=byte-stream,alignment=au"
        self.factory.set_launch(
            f"( appsrc name=src is-live=true format=time do-timestamp=false max-bytes=4000000 "
            f'block=false leaky-type=downstream caps="{caps}" ! {PIPELINES[codec]} )'
        )
        self.factory.set_shared(True)
        self.factory.connect("media-configure", self._configure)

    def _configure(self, _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        element = media.get_element()
        with self.lock:
            self.appsrc = element.get_child_by_name("src")
            self.pipeline = element
            self.offset = None
        media.connect("unprepared", self._unprepared)
        say(f"WANT {self.index} 1")

    def _unprepared(self, _media: GstRtspServer.RTSPMedia) -> None:
        with self.lock:
            self.appsrc = self.pipeline = None
        say(f"WANT {self.index} 0")

    def end(self) -> None:
        with self.lock:
            src, self.appsrc = self.appsrc, None
        if src is not None:
            src.emit("end-of-stream")

    def push(self, data: bytes, pts_ns: int, key: bool) -> None:
        with self.lock:
            src, pipeline = self.appsrc, self.pipeline
            if src is None or pipeline is None:
                return  # nobody watches
            if self.offset is None:
                if not key:
                    return  # a new media starts at a keyframe
                self.offset = _running_time(pipeline) - pts_ns
            offset = self.offset
        buf = Gst.Buffer.new_wrapped(data)
        buf.pts = buf.dts = max(0, pts_ns + offset)
        if not key:
            buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
        src.emit("push-buffer", buf)


def _running_time(element: Gst.Element) -> int:
    clock = element.get_clock()
    if clock is None:
        return 0
    return max(0, clock.get_time() - element.get_base_time())


class Server:
    def __init__(self, host: str, port: int, codec: str, paths: list[str]) -> None:
        self.mounts = [Mount(i, p, codec) for i, p in enumerate(paths)]
        self.by_path = {"/" + m.path: m for m in self.mounts}
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address(host)
        self.server.set_service(str(port))
        user, password = os.environ.get("STREAM_DENOISE_RTSP_USER"), os.environ.get("STREAM_DENOISE_RTSP_PASSWORD")
        if user:
            self._auth(user, password or "")
        points = self.server.get_mount_points()
        for m in self.mounts:
            points.add_factory("/" + m.path, m.factory)
        self.server.connect("client-connected", self._client)

    def _auth(self, user: str, password: str) -> None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", ROLE)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        self.server.set_auth(auth)
        for m in self.mounts:
            perms = GstRtspServer.RTSPPermissions()
            perms.add_role(ROLE)
            perms.add_permission_for_role(ROLE, "media.factory.access", True)
            perms.add_permission_for_role(ROLE, "media.factory.construct", True)
            m.factory.set_permissions(perms)

    def _client(self, _server: GstRtspServer.RTSPServer, client: GstRtspServer.RTSPClient) -> None:
        client.connect("play-request", self._play)
        client.connect("closed", self._closed)

    def _mount_of(self, ctx: GstRtspServer.RTSPContext) -> Mount | None:
        uri = ctx.uri
        path = uri.abspath if uri is not None else ""
        for prefix, m in self.by_path.items():
            if path == prefix or path.startswith(prefix + "/"):
                return m
        return None

    def _play(self, client: GstRtspServer.RTSPClient, ctx: GstRtspServer.RTSPContext) -> None:
        m = self._mount_of(ctx)
        if m is None:
            return
        if not any(c is client for c in m.clients):
            m.clients.append(client)
            say(f"KEY {m.index}")  # a running media: this client waits for the next keyframe
            say(f"CLIENTS {m.index} {len(m.clients)}")

    def _closed(self, client: GstRtspServer.RTSPClient) -> None:
        for m in self.mounts:
            if any(c is client for c in m.clients):
                m.clients = [c for c in m.clients if c is not client]
                say(f"CLIENTS {m.index} {len(m.clients)}")


def read_records(server: Server, loop: GLib.MainLoop) -> None:
    """stdin -> mounts, until end of input (then stop the server)."""
    stdin = sys.stdin.buffer
    try:
        while True:
            head = stdin.read(HEADER.size)
            if len(head) < HEADER.size:
                return
            magic, kind, flags, mount, length, pts_ns = HEADER.unpack(head)
            if magic != MAGIC or length > MAX_PAYLOAD or mount >= len(server.mounts):
                say("ERROR malformed record on stdin")
                os._exit(3)
            data = stdin.read(length)
            if len(data) < length:
                return
            if kind == KIND_PACKET:
                server.mounts[mount].push(data, pts_ns, bool(flags & FLAG_KEY))
    finally:  # end every running stream (clients see the end, not a dropped connection), then stop
        for m in server.mounts:
            m.end()
        GLib.timeout_add(END_GRACE_MS, loop.quit)


def _load_gi() -> None:
    global GLib, Gst, GstRtspServer
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer  # noqa: F811


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--codec", choices=sorted(PIPELINES), default="h264")
    p.add_argument("--mount", action="append", required=True)
    a = p.parse_args()
    _load_gi()
    Gst.init(None)
    missing = [e for e in ("appsrc", f"{a.codec}parse", f"rtp{a.codec}pay") if Gst.ElementFactory.find(e) is None]
    if missing:
        say(f"ERROR GStreamer elements missing: {', '.join(missing)} (gstreamer1.0-plugins-base/-good/-bad)")
        sys.exit(2)
    server = Server(a.host, a.port, a.codec, a.mount)
    if server.server.attach(None) == 0:
        say(f"ERROR cannot listen on {a.host}:{a.port}")
        sys.exit(2)
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    threading.Thread(target=read_records, args=(server, loop), daemon=True).start()
    say(f"READY {server.server.get_bound_port()}")
    loop.run()


if __name__ == "__main__":
    main()
