"""Does a slow subscriber slow the pipeline? Throughput of `run` (file source, lite, ONNX Runtime,
640x360 noisy bikes) with no subscriber, with a fast one, with one that sleeps 100 ms per frame,
and with one that never reads; plus the memory growth of each run.

    python -m benchmarks.slow_consumer [--frames 300] [--out benchmarks/results/slow_consumer.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

from .speed import source_clip

ROOT = Path(__file__).resolve().parents[1]


def measure(clip: Path, endpoint: str, consumer: str, frames: int) -> dict:
    from stream_denoise.config import ModelConfig, PublishConfig, RunConfig, SourceConfig
    from stream_denoise.pipeline import Pipeline
    from stream_denoise.subscribe import Subscriber

    cfg = RunConfig(source=SourceConfig(uri=str(clip), loop=True), model=ModelConfig(model="lite", backend="onnxruntime"),
                    publish=PublishConfig(endpoint=endpoint), max_frames=frames, status_interval_s=3600)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    got = [0]
    stop = threading.Event()
    sub = Subscriber(endpoint, rcvhwm=4) if consumer != "none" else None
    try:
        def drain() -> None:
            while not stop.is_set():
                if sub is None or consumer == "stuck":  # no subscriber / one that never reads
                    time.sleep(0.1)
                    continue
                if sub.recv(timeout=0.2) is not None:
                    got[0] += 1
                    if consumer == "slow":
                        time.sleep(0.1)

        t = threading.Thread(target=drain)
        t.start()
        with Pipeline(cfg) as pipe:
            t0 = time.perf_counter()
            m = pipe.run()
            wall = time.perf_counter() - t0
        stop.set()
        t.join(timeout=10)
    finally:
        if sub is not None:
            sub.close()
    return {"consumer": consumer, "fps": m.frames_out / wall, "frames_out": m.frames_out, "received": got[0],
            "publish_p99_ms": 1000 * m.latency["publish"].percentile(99),
            "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "slow_consumer.json")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    encoded, _ = source_clip(640, 360, 60)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mkv"
        clip.write_bytes(encoded)
        for rep in range(2):  # alternate, twice, so drift in machine load shows
            for consumer in ("none", "fast", "slow", "stuck"):
                r = measure(clip, f"ipc://{tmp}/p-{consumer}-{rep}", consumer, a.frames)
                rows.append(r)
                print(json.dumps(r))
    base = sum(r["fps"] for r in rows if r["consumer"] == "none") / 2
    summary = {c: sum(r["fps"] for r in rows if r["consumer"] == c) / 2 / base for c in ("fast", "slow", "stuck")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"frames": a.frames, "runs": rows, "fps_relative_to_no_subscriber": summary}, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
