#!/usr/bin/python3
"""A looping RTSP test server: ``/usr/bin/python3 tests/rtsp_server.py CLIP PORT``.

Runs under the *system* Python (it needs ``gi`` with gst-rtsp-server, which the project's Python lacks).
The clip is decoded once into memory; a live ``appsrc`` then pushes its frames forever at the clip's
frame rate (wall-clock timestamps, like a camera) through ``x264enc tune=zerolatency`` to one shared
media at ``rtsp://127.0.0.1:PORT/stream``. Prints ``READY`` on stdout once listening.
SIGSTOP it to simulate a stalled camera, SIGKILL to drop it; SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

KEYFRAME_INTERVAL = 10  # frames; a (re)joining client decodes within a third of a second


def decode_clip(path: str) -> tuple[list[bytes], Gst.Caps, float]:
    """All frames of ``path`` as I420 buffers, their caps, and the frame rate (fps)."""
    pipe = Gst.parse_launch(
        f'filesrc location="{path}" ! decodebin ! videoconvert ! video/x-raw,format=I420 '
        "! appsink name=sink sync=false emit-signals=false"
    )
    sink = pipe.get_by_name("sink")
    pipe.set_state(Gst.State.PLAYING)
    frames: list[bytes] = []
    caps = None
    while True:
        sample = sink.emit("try-pull-sample", 10 * Gst.SECOND)
        if sample is None:
            break
        caps = sample.get_caps()
        buf = sample.get_buffer()
        frames.append(buf.extract_dup(0, buf.get_size()))
    pipe.set_state(Gst.State.NULL)
    if not frames or caps is None:
        raise SystemExit(f"rtsp_server: no frames decoded from {path}")
    s = caps.get_structure(0)
    ok, num, den = s.get_fraction("framerate")
    fps = num / den if ok and num > 0 and den > 0 else 30.0
    out = Gst.Caps.from_string(
        f"video/x-raw,format=I420,width={s.get_value('width')},height={s.get_value('height')},"
        f"framerate={int(round(fps))}/1"
    )
    return frames, out, fps


class Feeder:
    """Pushes the clip's frames, looping, into the current media's appsrc at the clip's rate."""

    def __init__(self, frames: list[bytes], caps: Gst.Caps, fps: float) -> None:
        self.frames, self.caps, self.fps = frames, caps, fps
        self.appsrc: Gst.Element | None = None
        self.i = 0
        GLib.timeout_add(max(1, int(1000 / fps)), self.tick)

    def configure(self, _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_child_by_name("src")
        src.set_property("caps", self.caps)
        self.appsrc = src

    def tick(self) -> bool:
        if self.appsrc is not None:
            data = self.frames[self.i % len(self.frames)]
            self.i += 1
            ret = self.appsrc.emit("push-buffer", Gst.Buffer.new_wrapped(data))
            if ret not in (Gst.FlowReturn.OK,):
                self.appsrc = None  # media torn down; the next client configures a new one
        return True


def main() -> None:
    clip, port = sys.argv[1], sys.argv[2]
    Gst.init(None)
    frames, caps, fps = decode_clip(clip)
    feeder = Feeder(frames, caps, fps)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( appsrc name=src is-live=true do-timestamp=true format=time max-bytes=1000000 leaky-type=upstream "
        "! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast "
        f"key-int-max={KEYFRAME_INTERVAL} ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )
    factory.set_shared(True)
    factory.connect("media-configure", feeder.configure)
    server.get_mount_points().add_factory("/stream", factory)
    if server.attach(None) == 0:
        raise SystemExit(f"rtsp_server: cannot listen on port {port}")

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print("READY", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
