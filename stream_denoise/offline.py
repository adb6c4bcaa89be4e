"""File to file: every frame of INPUT denoised into OUTPUT, same count, size and order.

Decoding (the source's thread), inference (frames already decoded go to the ONNX Runtime lanes
together) and encoding (a writer thread, at most two batches behind) overlap, as in ``run``."""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .config import ModelConfig, SourceConfig
from .denoiser import Denoiser
from .errors import SourceError
from .frame import Frame
from .sources.base import ready_frames

log = logging.getLogger(__name__)


def denoise_file(src: str | Path, dst: str | Path, model: ModelConfig, progress_every_s: float = 5.0) -> int:
    """Denoise a video file. OUTPUT .mkv is lossless FFV1, .mp4 H.264. Returns frames written.

    Refuses an OUTPUT that resolves to the INPUT or the model file (ConfigError) before anything is
    opened. OUTPUT is written as OUTPUT.PID.part and renamed when finished. A damaged INPUT
    (truncated, undecodable packets) has every frame that decodes written, then raises SourceError
    saying so; Ctrl-C/SIGTERM/SIGHUP finish OUTPUT with the frames denoised so far.
    """
    from .backends import create_backend
    from .files import check_outputs
    from .sources import open_source
    from .video_writer import VideoWriter, check_video_path

    model_file = model.model if Path(model.model).is_file() else None
    check_outputs([("input", src), ("--model", model_file)], [("output", dst)])
    check_video_path(Path(dst))
    denoiser = Denoiser(create_backend(model), model.window, strength=model.strength)
    written, t0, last = 0, time.monotonic(), time.monotonic()
    writer: VideoWriter | None = None
    try:
        with open_source(SourceConfig(uri=str(src), reconnect=False, read_timeout_s=60)) as source:
            fps = source.fps or 25.0

            def write(frames: list[Frame]) -> None:
                nonlocal writer, written
                for f in frames:
                    if writer is None:
                        writer = VideoWriter(dst, f.width, f.height, fps)
                    elif (f.width, f.height) != (writer.width, writer.height):
                        raise SourceError(f"{src}: the frame size changes mid-file ({f.width}x{f.height}); "
                                          "split the file or use `run`")
                    writer.write(f.pixels)
                    written += 1

            try:
                # frames already decoded go to the lanes together; encoding runs on its own thread, at
                # most two batches behind (bounded), its errors surface here
                with ThreadPoolExecutor(1, thread_name_prefix="writer") as pool:
                    pending: deque[Future[None]] = deque()

                    def emit(frames: list[Frame]) -> None:
                        pending.append(pool.submit(write, frames))
                        while len(pending) > 2:
                            pending.popleft().result()

                    for frame in source:
                        emit(denoiser.push_many([frame, *ready_frames(source, denoiser.lanes - 1)]))
                        if time.monotonic() - last > progress_every_s:
                            last = time.monotonic()
                            log.info("%d frames, %.1f fps", written, written / (last - t0))
                    emit(denoiser.flush())
                    while pending:
                        pending.popleft().result()
            finally:
                if writer is not None:
                    writer.close()  # finished and renamed: every frame written so far is kept
            stats = source.stats
    except KeyboardInterrupt:
        log.warning("interrupted: %d frames written to %s", written, dst)
        raise
    finally:
        denoiser.backend.close()
    damage = [p for p in (stats.problem, f"{stats.decode_errors} undecodable packet(s) skipped" if stats.decode_errors
                          else None) if p]
    if written == 0:
        raise SourceError(f"{src}: no frame could be decoded{' (' + '; '.join(damage) + ')' if damage else ''}")
    if damage:
        raise SourceError(f"{src}: damaged input ({'; '.join(damage)}): the {written} frames that decoded "
                          f"were written to {dst}")
    log.info("%d frames in %.1f s (%.1f fps)", written, time.monotonic() - t0, written / max(time.monotonic() - t0, 1e-9))
    return written
