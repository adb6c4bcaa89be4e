"""The README's main job on the bundled sample: no camera, no GPU.

Denoises ``data/sample_noisy.mp4`` through the full pipeline (file source -> temporal buffer ->
ONNX Runtime -> ZeroMQ publisher + recorder), receives the published stream with the package's own
``Subscriber`` and writes ``OUT/denoised.mp4`` and ``OUT/side_by_side.png`` (noisy | denoised).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from .config import ModelConfig, OutputConfig, PublishConfig, RunConfig, SourceConfig

log = logging.getLogger(__name__)

SAMPLE = Path(__file__).parent / "data" / "sample_noisy.mp4"


def run_demo(out: Path, stop: threading.Event | None = None, endpoint: str = "tcp://127.0.0.1:5555") -> dict:
    import cv2

    from .files import atomic_write
    from .pipeline import Pipeline
    from .subscribe import Subscriber
    from .media import read_clip

    out.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig(source=SourceConfig(uri=str(SAMPLE), name="sample"), model=ModelConfig(),
                    publish=PublishConfig(endpoint=endpoint), output=OutputConfig(path=out / "denoised.mp4"),
                    status_interval_s=2.0)
    received: dict[int, np.ndarray] = {}
    with Pipeline(cfg) as pipeline, Subscriber(endpoint, timeout_s=0.2) as sub:
        stop = stop or threading.Event()

        def consume() -> None:
            while not (done.is_set() and sub.recv(timeout=0.5) is None):
                msg = sub.recv(timeout=0.2)
                if msg is not None:
                    received[msg.index] = msg.image

        done = threading.Event()
        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        threading.Event().wait(0.3)  # let the subscription reach the publisher (ZeroMQ slow joiner)
        metrics = pipeline.run(stop)
        done.set()
        consumer.join(timeout=5)
    noisy = read_clip(SAMPLE)
    mid = sorted(received)[len(received) // 2] if received else None
    if mid is not None:
        den = cv2.cvtColor(received[mid], cv2.COLOR_BGR2RGB)
        pair = np.concatenate([noisy[mid], np.full((noisy.shape[1], 8, 3), 255, np.uint8), den], axis=1)
        ok, png = cv2.imencode(".png", cv2.cvtColor(pair, cv2.COLOR_RGB2BGR))
        if ok:
            atomic_write(out / "side_by_side.png", png.tobytes())
    summary = {"published": metrics.frames_out, "received_by_subscriber": len(received),
               "video": str(out / "denoised.mp4"), "picture": str(out / "side_by_side.png")}
    log.info("demo: published %d frames on %s, subscriber received %d; wrote %s and %s", metrics.frames_out,
             endpoint, len(received), summary["video"], summary["picture"])
    return summary
