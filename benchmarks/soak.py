"""Soak test (not in CI): the pipeline against a real local RTSP camera for a long time, with faults.

    python -m benchmarks.soak --minutes 30 [--fault-every 120] [--out benchmarks/results/soak.json]

Every ``fault_every`` seconds one fault is injected in turn: the camera is killed and restarted
after 3 s (a reboot), stalled for 8 s (SIGSTOP: connection open, no data), or killed for 20 s (a
long outage). Reported: memory (RSS) and thread count over time, reconnect times (fault end ->
first frame of the new segment at the subscriber), frames published vs expected, and the
pipeline's own counters. Needs the GStreamer RTSP server packages (see tests/rtsp_server.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "stream_denoise" / "data" / "sample_noisy.mp4"
SERVER = ROOT / "tests" / "rtsp_server.py"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Camera:
    def __init__(self, port: int) -> None:
        self.port, self.proc = port, None
        self.url = f"rtsp://127.0.0.1:{port}/stream"

    def start(self) -> None:
        self.proc = subprocess.Popen(["/usr/bin/python3", str(SERVER), str(SAMPLE), str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"READY":
            raise RuntimeError("RTSP server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)


def soak(minutes: float, fault_every: float, out: Path) -> dict:
    import socket

    from stream_denoise.config import ModelConfig, PublishConfig, RunConfig, SourceConfig
    from stream_denoise.pipeline import Pipeline
    from stream_denoise.subscribe import Subscriber

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cam = Camera(port)
    cam.start()
    tmp = Path(tempfile.mkdtemp())
    endpoint = f"ipc://{tmp / 'soak'}"
    cfg = RunConfig(source=SourceConfig(uri=cam.url, read_timeout_s=3, backoff_initial_s=0.5, backoff_max_s=5),
                    model=ModelConfig(model="lite", backend="onnxruntime"), publish=PublishConfig(endpoint=endpoint),
                    status_interval_s=30)
    stop = threading.Event()
    samples: list[dict] = []
    faults: list[dict] = []
    received = {"n": 0, "segments": {}}  # segment -> wall time of its first frame
    with Subscriber(endpoint, rcvhwm=100) as sub, Pipeline(cfg) as pipe:
        def consume() -> None:
            while not stop.is_set():
                msg = sub.recv(timeout=0.5)
                if msg is not None:
                    received["n"] += 1
                    received["segments"].setdefault(msg.header["segment"], time.time())

        threads = [threading.Thread(target=consume), threading.Thread(target=pipe.run, args=(stop,))]
        for t in threads:
            t.start()
        t0 = time.time()
        next_fault, kinds, k = t0 + fault_every, ["reboot", "stall", "outage"], 0
        while time.time() - t0 < minutes * 60:
            time.sleep(5)
            samples.append({"t_s": round(time.time() - t0, 1), "rss_mb": round(_rss_mb(), 1),
                            "threads": threading.active_count(), "frames_out": pipe.metrics.frames_out,
                            "received": received["n"], "reconnects": pipe.source.stats.reconnects})
            if time.time() >= next_fault:
                kind = kinds[k % 3]
                k += 1
                seg_before = max(received["segments"], default=0)
                if kind == "reboot":
                    cam.kill(); time.sleep(3); cam.start()  # noqa: E702
                elif kind == "stall":
                    cam.signal(signal.SIGSTOP); time.sleep(8); cam.signal(signal.SIGCONT)  # noqa: E702
                else:
                    cam.kill(); time.sleep(20); cam.start()  # noqa: E702
                ended = time.time()
                deadline = ended + 60
                while time.time() < deadline and max(received["segments"], default=0) <= seg_before:
                    time.sleep(0.1)
                back = received["segments"].get(max(received["segments"], default=0), float("nan"))
                faults.append({"kind": kind, "at_s": round(ended - t0, 1),
                               "recovered_s": round(back - ended, 2) if back >= ended else None})
                logging.info("fault %s: recovered in %s s", kind, faults[-1]["recovered_s"])
                next_fault = time.time() + fault_every
        stop.set()
        for t in threads:
            t.join(timeout=30)
        snapshot = pipe.snapshot()
    cam.kill()
    shutil.rmtree(tmp, ignore_errors=True)
    result = {"minutes": minutes, "fault_every_s": fault_every, "samples": samples, "faults": faults,
              "pipeline": snapshot, "received": received["n"],
              "rss_mb_first_last_max": [samples[0]["rss_mb"], samples[-1]["rss_mb"], max(s["rss_mb"] for s in samples)],
              "threads_first_last_max": [samples[0]["threads"], samples[-1]["threads"], max(s["threads"] for s in samples)]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--fault-every", type=float, default=120)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    r = soak(a.minutes, a.fault_every, a.out)
    print(json.dumps({k: r[k] for k in ("faults", "received", "rss_mb_first_last_max", "threads_first_last_max")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
