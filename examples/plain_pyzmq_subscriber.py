"""Receive stream_denoise frames with plain pyzmq (stream_denoise itself not needed), newest first.

A SUB socket queues what it receives, so a consumer slower than the stream works through a backlog
that only grows: 5 s behind after 6 s in our measurement (README, "Receiving frames in your own
code"). Setting ZMQ_RCVHWM=1 alone does not help over TCP: the kernels' socket buffers still hold
seconds of frames. What does: before each frame you process, read every message already waiting
without blocking and keep only the last (what ``stream_denoise.Subscriber(latest_only=True)`` does
in a thread). Keep the default RCVHWM for that: it lets ZeroMQ pull the waiting messages in at once.

    python examples/plain_pyzmq_subscriber.py tcp://127.0.0.1:5555
"""

from __future__ import annotations

import json
import sys

import numpy as np
import zmq


def newest(sock: zmq.Socket, timeout_ms: int = 1000) -> list[bytes] | None:
    """The newest message waiting on ``sock`` (older ones are read and dropped), or None after ``timeout_ms``."""
    if not sock.poll(timeout_ms):
        return None
    parts = sock.recv_multipart()
    while True:
        try:
            parts = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return parts


def decode(parts: list[bytes]) -> tuple[dict, np.ndarray]:
    """``(header, image)`` of a ``[topic, JSON header, pixels]`` message with raw pixels: (H, W, 3) uint8 BGR."""
    header = json.loads(parts[1])
    if header["encoding"] != "raw":
        raise ValueError("this example reads raw pixels; decode jpeg/png with cv2.imdecode")
    return header, np.frombuffer(parts[2], np.uint8).reshape(header["height"], header["width"], 3)


def main(endpoint: str) -> None:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    while True:
        parts = newest(sock)
        if parts is None:
            continue
        header, image = decode(parts)
        print(header["seq"], header["index"], header["captured_at"], image.shape)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:5555")
