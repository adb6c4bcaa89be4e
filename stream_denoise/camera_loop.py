"""The one camera loop: read frames, denoise them through their temporal window, hand each result
to an output, and count. ``Pipeline`` (``run``, and each Ray camera actor, which runs a Pipeline) and
``multicam.Camera`` (each camera of the one-process multi-camera runtime) drive it; the multi-process
runtime (:mod:`stream_denoise.fleet`) splits it: its decode workers read through :func:`counted_frames`
and its inference lanes run :func:`denoise_frames` / :func:`finish_stream` on frames from shared
memory. Opening a live source with retries is ``sources.open_retrying`` (one
:class:`~stream_denoise.backoff.Backoff`).

Counted in the :class:`~stream_denoise.metrics.Metrics` given: ``frames_in``, ``source_timeouts``,
the latency of waiting for a frame (``wait``) and of the denoiser's stages (``pre``, ``infer``,
``post``, per output frame). What the output does (publish, record, queue) it counts itself.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .errors import SourceTimeout
from .frame import Frame
from .metrics import Metrics
from .sources.base import ready_frames

if TYPE_CHECKING:
    from .denoiser import Denoiser
    from .sources import Source, SourceStats

Output = Callable[[Frame], None]  # takes each denoised frame (publish, queue, record); must not block long


def counted_frames(source: Source, m: Metrics, stop: threading.Event, poll_s: float) -> Iterator[Frame]:
    """Frames of ``source`` until it ends or ``stop`` is set, re-checking ``stop`` every ``poll_s``;
    counts frames in, source timeouts and the wait for each frame in ``m``."""
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            frame = source.read(timeout=poll_s)
        except SourceTimeout:
            m.source_timeouts += 1
            continue
        if frame is None:
            return
        m.latency["wait"].add(time.perf_counter() - t0)
        m.frames_in += 1
        yield frame


def denoise_stream(source: Source, denoiser: Denoiser, m: Metrics, stop: threading.Event, output: Output, *,
                   max_frames: int | None = None, poll_s: float = 0.5, record_input: Output | None = None,
                   busy: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
                   between_frames: Callable[[], None] | None = None) -> None:
    """Denoise ``source`` until it ends, ``max_frames`` frames came in, or ``stop`` is set, then flush the
    look-ahead: exactly ``max_frames`` frames go out.

    Frames already decoded go to the denoiser together, one per backend lane (files; live sources only
    when the loop is behind). ``busy``: held around each denoiser call (a shared batching backend waits
    for the windows of busy cameras). ``record_input``: each noisy frame, before it is denoised.
    ``between_frames``: called before each denoiser call (``run --adapt`` swaps a new model in there).
    """
    lanes = denoiser.lanes
    for frame in counted_frames(source, m, stop, poll_s):
        frames = [frame]
        if lanes > 1:
            room = lanes - 1 if max_frames is None else min(lanes - 1, max_frames - m.frames_in)
            extra = ready_frames(source, room)
            m.frames_in += len(extra)
            frames += extra
        denoise_frames(frames, denoiser, m, output, record_input=record_input, busy=busy,
                       between_frames=between_frames)
        if max_frames is not None and m.frames_in >= max_frames:
            break
    finish_stream(denoiser, m, output, busy=busy)


def denoise_frames(frames: list[Frame], denoiser: Denoiser, m: Metrics, output: Output, *,
                   record_input: Output | None = None,
                   busy: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
                   between_frames: Callable[[], None] | None = None) -> None:
    """One step of a camera: frames that came in (already counted) through the denoiser; what
    came out goes to ``output``. Also the step of the multi-process runtime's inference lanes
    (:mod:`stream_denoise.fleet`), which take the frames from a shared-memory ring instead."""
    if record_input is not None:
        for f in frames:
            record_input(f)
    if between_frames is not None:
        between_frames()
    with busy():
        out = denoiser.push_many(frames) if len(frames) > 1 else denoiser.push(frames[0])
    _emit(out, denoiser, m, output)


def finish_stream(denoiser: Denoiser, m: Metrics, output: Output, *,
                  busy: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext) -> None:
    """The end of a camera's stream: the frames still waiting for look-ahead go out."""
    with busy():
        out = denoiser.flush()
    _emit(out, denoiser, m, output)


def _emit(frames: list[Frame], denoiser: Denoiser, m: Metrics, output: Output) -> None:
    t = denoiser.times
    for f in frames:
        m.latency["pre"].add(t.pre)
        m.latency["infer"].add(t.infer)
        m.latency["post"].add(t.post)
        output(f)


def source_counters(stats: SourceStats | None) -> dict[str, int]:
    """A source's counters for snapshots (health, Prometheus): zeros before it is open."""
    return {"source_frames_decoded": stats.frames_decoded if stats else 0,
            "source_frames_dropped": stats.frames_dropped if stats else 0,
            "source_reconnects": stats.reconnects if stats else 0,
            "source_decode_errors": stats.decode_errors if stats else 0}
