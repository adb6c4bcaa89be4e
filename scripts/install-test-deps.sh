#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian machine (run as root): ffmpeg (peers in the
# benchmarks; ffmpeg/ffprobe as RTSP clients), GStreamer's RTSP server for the integration tests and
# `run --rtsp-out` (plugins-bad: h264parse/h265parse; tools: gst-launch-1.0 as a client), then the package with its
# [dev] extra. torch is pinned to the CPU build (a range would pull a multi-GB CUDA build).
set -euo pipefail
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  need=""
  command -v ffmpeg >/dev/null || need=1
  /usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0")' 2>/dev/null || need=1
  for element in x264enc h264parse rtph264pay h265parse rtph265pay mpegtsmux; do  # RTSP camera, --rtsp-out, RECORD server
    gst-inspect-1.0 "$element" >/dev/null 2>&1 || need=1
  done
  command -v gst-launch-1.0 >/dev/null || need=1
  if [ -n "$need" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
      gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-tools >/dev/null
  fi
fi
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
