"""A tiny HTTP endpoint for liveness/readiness and Prometheus metrics (standard library only).

GET /healthz -> 200 "ok" while frames were published within ``stale_after_s`` (503 otherwise);
GET /metrics -> Prometheus text format: frames in/out, drops, reconnects, latency quantiles.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

Snapshot = Callable[[], dict[str, float | int]]


class HealthServer:
    def __init__(self, port: int, snapshot: Snapshot, host: str = "127.0.0.1", stale_after_s: float = 10.0) -> None:
        self.snapshot, self.stale_after_s = snapshot, stale_after_s
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.startswith("/healthz"):
                    ok, body = outer.healthy()
                    self._reply(200 if ok else 503, body)
                elif self.path.startswith("/metrics"):
                    self._reply(200, outer.prometheus(), "text/plain; version=0.0.4")
                else:
                    self._reply(404, "not found")

            def _reply(self, code: int, body: str, ctype: str = "text/plain") -> None:
                data = body.encode()
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
        lines = []
        for key, value in sorted(self.snapshot().items()):
            name = f"stream_denoise_{key}"
            lines.append(f"{name} {float(value):.6g}")
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
