"""A tiny HTTP endpoint for liveness/readiness and Prometheus metrics.

GET /healthz -> 200 "ok" while frames were published within ``stale_after_s`` (503 otherwise);
GET /metrics -> Prometheus text format written by ``prometheus_client``: every value of the
snapshot with its ``# HELP`` and ``# TYPE``, counters named ``..._total``, floats printed exactly
(``repr``), so a counter past 10^7 frames and a Unix timestamp keep every digit.

A snapshot (``Pipeline.snapshot``, ``MultiCamera.snapshot``) maps the keys of :data:`METRICS` to
numbers, or to nested dicts whose keys are the values of the metric's labels (``latency_seconds``:
``{stage: {quantile: seconds}}``); ``camera`` holds one snapshot per camera name, exposed as
``stream_denoise_camera_<name>{camera="..."}``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

Snapshot = Callable[[], dict[str, Any]]

# snapshot key -> (metric name after "stream_denoise_", type, help, label names of the nested dicts)
METRICS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "frames_in": ("frames_in", "counter", "Frames read from the source.", ()),
    "frames_out": ("frames_out", "counter", "Denoised frames that left the pipeline (published and recorded).", ()),
    "dropped_queue": ("dropped_queue", "counter",
                      "Denoised frames of a live source dropped because the publish stage fell behind.", ()),
    "source_timeouts": ("source_timeouts", "counter", "Polls of the source that waited without a frame.", ()),
    "last_output_at": ("last_output_timestamp_seconds", "gauge", "Unix time of the last frame out (0 before the first).", ()),
    "uptime_s": ("uptime_seconds", "gauge", "Seconds since the pipeline started.", ()),
    "latency_seconds": ("latency_seconds", "gauge",
                        "Latency of each stage (wait, pre, infer, post, publish; e2e: decode to publish) over the "
                        "last 1000 frames, by quantile.", ("stage", "quantile")),
    "source_frames_decoded": ("source_frames_decoded", "counter", "Frames decoded by the source.", ()),
    "source_frames_dropped": ("source_frames_dropped", "counter",
                              "Decoded frames never denoised (newest frame wins, max_fps, flushed at a drop).", ()),
    "source_reconnects": ("source_reconnects", "counter", "Successful reconnects after a drop or stall.", ()),
    "source_decode_errors": ("source_decode_errors", "counter", "Packets that failed to decode and were skipped.", ()),
    "source_connected": ("source_connected", "gauge", "1 while the source is connected.", ()),
    "publish_sent": ("publish_sent", "counter", "Messages the publishing socket accepted.", ()),
    "publish_dropped": ("publish_dropped", "counter",
                        "Frames the publishing socket refused: no subscriber got them. Per-subscriber losses of a "
                        "live stream show as seq gaps at that subscriber.", ()),
    "cameras": ("cameras", "gauge", "Cameras in the deployment.", ()),
    "cameras_up": ("cameras_up", "gauge", "Cameras connected now.", ()),
    "cameras_failed": ("cameras_failed", "gauge", "Cameras that stopped with an error.", ()),
    "batches": ("batches", "counter", "Inference calls of the shared backends.", ()),
    "batch_windows": ("batch_windows", "counter", "Windows denoised by the shared backends.", ()),
    "up": ("up", "gauge", "1 while the camera is connected.", ()),
    "ring_skipped": ("ring_skipped", "counter",
                     "Frames of a live camera passed over for a newer one in its shared-memory ring (newest wins: "
                     "inference was behind).", ()),
    "ring_full": ("ring_full", "counter", "Frames a decode worker dropped because the camera's ring had no free slot.", ()),
    "lag_seconds": ("lag_seconds", "gauge", "Age of the camera's newest frame when an inference lane took it.", ()),
    "failed": ("failed", "gauge", "1 when the camera stopped with an error.", ()),
    "published": ("published", "counter", "Frames of the camera the publishing socket accepted.", ()),
    "rtsp_sent": ("rtsp_sent", "counter", "Frames the RTSP output encoded and sent.", ()),
    "rtsp_bytes": ("rtsp_bytes", "counter", "Encoded bytes the RTSP output sent.", ()),
    "rtsp_dropped": ("rtsp_dropped", "counter",
                     "Frames the RTSP output dropped before encoding (encoder or network slower, target down).", ()),
    "rtsp_idle": ("rtsp_idle", "counter", "Frames not encoded because nobody watched the served stream.", ()),
    "rtsp_reconnects": ("rtsp_reconnects", "counter", "Reconnects of the push target or restarts of the server.", ()),
    "rtsp_clients": ("rtsp_clients", "gauge", "Clients watching the served stream.", ()),
    "rtsp_connected": ("rtsp_connected", "gauge", "1 while the push target (or the server helper) is up.", ()),
    "rtsp_encode_p50_ms": ("rtsp_encode_p50_ms", "gauge", "Median encode time of the RTSP output (ms).", ()),
    "rtsp_encode_p99_ms": ("rtsp_encode_p99_ms", "gauge", "99th percentile encode time of the RTSP output (ms).", ()),
    # run --adapt (stream_denoise.adapt)
    "adapt_generation": ("adapt_generation", "gauge",
                         "Generation of the running model (0: the configured one; +1 per adapted model swapped in).", ()),
    "adapt_samples": ("adapt_samples", "gauge", "Input frames held in the rolling sample adaptation trains on.", ()),
    "adapt_steps": ("adapt_steps", "counter", "Training steps the trainer process has done.", ()),
    "adapt_last_gain": ("adapt_last_gain", "gauge",
                        "Relative drop of the held-out loss of the last candidate against the running model "
                        "(0.05: 5 % lower; negative: worse; NaN before the first).", ()),
    "adapt_runs": ("adapt_runs", "counter", "Training runs that finished with a candidate or an error.", ()),
    "adapt_swaps": ("adapt_swaps", "counter", "Adapted models swapped in.", ()),
    "adapt_rejected": ("adapt_rejected", "counter", "Candidates not better than the running model by the margin.", ()),
    "adapt_failures": ("adapt_failures", "counter", "Training runs that failed, crashed or hung.", ()),
    "adapt_trainer_restarts": ("adapt_trainer_restarts", "counter", "Trainer processes replaced after a crash or a hang.", ()),
    "adapt_training": ("adapt_training", "gauge", "1 while a training run is in progress.", ()),
}
GROUPS = {"camera": "camera"}  # snapshot key -> label: a nested snapshot per label value


def _leaves(value: Any, depth: int, labels: tuple[str, ...] = ()) -> Iterator[tuple[list[str], float]]:
    """(label values, number) of a value nested ``depth`` dicts deep."""
    if depth == 0:
        yield list(labels), float(value)
        return
    for k, v in value.items():
        yield from _leaves(v, depth - 1, (*labels, str(k)))


class SnapshotCollector:
    """A ``prometheus_client`` collector of a snapshot function (see the module docstring)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}

        def add(key: str, value: Any, labels: list[tuple[str, str]], prefix: str) -> None:
            if key in GROUPS:
                for group_value, sub in value.items():
                    for k, v in sub.items():
                        add(k, v, [*labels, (GROUPS[key], str(group_value))], f"{prefix}{key}_")
                return
            name, kind, doc, label_names = METRICS.get(key, (key, "gauge", "(undocumented)", ()))
            full = f"stream_denoise_{prefix}{name}"
            family = families.get(full)
            if family is None:
                cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                family = families[full] = cls(full, doc, labels=[n for n, _ in labels] + list(label_names))
            for values, number in _leaves(value, len(label_names)):
                family.add_metric([v for _, v in labels] + values, number)

        for key, value in self._snapshot().items():
            add(key, value, [], "")
        yield from families.values()


class HealthServer:
    def __init__(self, port: int, snapshot: Snapshot, host: str = "127.0.0.1", stale_after_s: float = 10.0) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        self.snapshot, self.stale_after_s = snapshot, stale_after_s
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(SnapshotCollector(snapshot))  # type: ignore[arg-type]
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.startswith("/healthz"):
                    ok, body = outer.healthy()
                    self._reply(200 if ok else 503, body.encode())
                elif self.path.startswith("/metrics"):
                    self._reply(200, generate_latest(outer._registry), CONTENT_TYPE_LATEST)
                else:
                    self._reply(404, b"not found")

            def _reply(self, code: int, data: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)
        self._thread.start()
        log.info("health and metrics on http://%s:%d/healthz and /metrics", host, self.port)

    def healthy(self) -> tuple[bool, str]:
        snap = self.snapshot()
        age = time.time() - float(snap.get("last_output_at", 0) or 0)
        if snap.get("frames_out", 0) and age <= self.stale_after_s:
            return True, "ok"
        return False, f"no frame published for {age:.0f} s" if snap.get("frames_out") else "starting"

    def prometheus(self) -> str:
        """The /metrics text."""
        from prometheus_client import generate_latest

        return generate_latest(self._registry).decode()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
