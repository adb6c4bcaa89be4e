#!/usr/bin/python3
"""An RTSP server in RECORD mode, the test stand-in for MediaMTX/go2rtc:
``/usr/bin/python3 tests/rtsp_record_server.py PORT OUTDIR``.

Runs under the *system* Python (``gi`` with gst-rtsp-server). Accepts ANNOUNCE/RECORD at
``rtsp://127.0.0.1:PORT/cam``; each recording session depayloads the H.264 (or H.265) and writes it
with its timestamps to ``OUTDIR/<start ns>-<pid>-<n>.ts`` (MPEG-TS: a killed server still leaves a readable
file). Prints ``READY`` on stdout once listening and ``RECORDING <file>`` when a session starts.
SIGKILL it to drop the target; SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def _rtp_timestamps(media: GstRtspServer.RTSPMedia) -> None:
    """Keep the sender's timestamps (RTP's, not re-timed by their arrival): the tests compare them."""
    pipeline = media.get_element().get_parent()
    it = pipeline.iterate_recurse() if pipeline is not None else None
    while it is not None:
        ok, element = it.next()
        if ok != Gst.IteratorResult.OK:
            break
        factory = element.get_factory()
        if factory is not None and factory.get_name() == "rtpbin":
            element.set_property("buffer-mode", 0)  # RTP_JITTER_BUFFER_MODE_NONE


def main() -> None:
    port, outdir = sys.argv[1], sys.argv[2]
    codec = sys.argv[3] if len(sys.argv) > 3 else "h264"
    Gst.init(None)
    sessions = [0]

    def configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        sessions[0] += 1
        path = os.path.join(outdir, f"{time.time_ns()}-{os.getpid()}-{sessions[0]}.ts")  # names sort by start
        media.get_element().get_child_by_name("file").set_property("location", path)
        media.connect("prepared", _rtp_timestamps)
        print(f"RECORDING {path}", flush=True)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
    factory.set_launch(f"( rtp{codec}depay name=depay0 ! {codec}parse ! mpegtsmux ! filesink name=file sync=false buffer-mode=unbuffered )")
    factory.set_latency(100)
    factory.connect("media-configure", configure)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        raise SystemExit(f"rtsp_record_server: cannot listen on port {port}")

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print("READY", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
