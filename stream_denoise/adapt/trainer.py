"""The trainer: a separate process that fine-tunes candidates and scores them against the running model.

The stream never waits on it: it is a ``spawn``-ed process (its own interpreter: torch is
imported only there), at niceness ``nice`` (19: it gets only the CPU time inference leaves) with
``threads`` torch threads, and on a GPU (``device = "cuda"``) a capped share of the device's
memory. One job at a time over a pipe: :class:`Job` in, :class:`Outcome` (or an error line) out.

A job: fine-tune from the running model on the training clips with ``fine_tune``'s objective and
budget (``train``, replaceable in tests by any picklable function of the same signature), export
the candidate to ONNX, then score running model and candidate on the held-out clips with the
same self-supervised criterion (``train.finetune.held_out_losses``; the running model builds the
targets). Scoring is not part of ``train``: a trainer that produces worse weights cannot vouch
for them.

:class:`TrainerProcess` is the parent's handle: ``submit`` a job, ``poll`` for its outcome; a
process that died (``TrainerDied``) or overran its deadline (``TrainerHung``: killed) is
restarted on the next ``submit``, and ``restarts`` counts it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StreamDenoiseError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    parent: Path  # the running model's .pt
    train: list[np.ndarray]  # (T, h, w, 3) uint8 RGB clips
    held: list[np.ndarray]  # held-out clips, never trained on
    workdir: Path  # where the candidate files go
    minutes: float
    steps: int
    batch: int
    patch: int
    seed: int = 0


@dataclass(frozen=True)
class Outcome:
    candidate_pt: Path
    candidate_onnx: Path
    objective: str  # the held-out criterion: temporal or masked
    parent_loss: float
    candidate_loss: float
    steps: int
    seconds: float
    noise_reading: list[list[float]] = field(default_factory=list)  # (scales, bands) of the training clips

    @property
    def gain(self) -> float:
        """Relative drop of the held-out loss (0.05: 5 % lower than the running model's)."""
        return (self.parent_loss - self.candidate_loss) / self.parent_loss if self.parent_loss > 0 else 0.0


Train = Callable[[Job], tuple[Path, dict[str, Any]]]  # job -> (candidate .pt, summary: "steps", "objective")


def fine_tune_candidate(job: Job) -> tuple[Path, dict[str, Any]]:
    """The default ``train``: ``fine_tune`` from the running model (same objective as the command)."""
    from ..train.finetune import FineTune, fine_tune

    out = job.workdir / "candidate.pt"
    summary = fine_tune(job.train, out, FineTune(init=str(job.parent), minutes=job.minutes, steps=job.steps,
                                                 progress=False, batch=job.batch, patch=job.patch, seed=job.seed))
    return out, summary


def run_job(job: Job, train: Train) -> Outcome:
    """Train, export and score one candidate (in the trainer process)."""
    from .. import noise_level
    from ..export.to_onnx import export_onnx
    from ..model import load_model
    from ..train.finetune import held_out_losses

    t0 = time.monotonic()
    pt, summary = train(job)
    onnx = export_onnx(pt, pt.with_suffix(".onnx"))
    objective, (parent_loss, cand_loss) = held_out_losses(load_model(job.parent), [load_model(pt)], job.held,
                                                          str(summary.get("objective", "temporal")), seed=job.seed,
                                                          batch=job.batch, patch=job.patch)
    reading = np.median(np.stack([noise_level.estimate_clip(c, n=4) for c in job.train]), axis=0)
    return Outcome(pt, onnx, objective, parent_loss, cand_loss, int(summary.get("steps", 0)),
                   round(time.monotonic() - t0, 1), reading.round(2).tolist())


def _serve(conn: Connection, train: Train, threads: int, nice: int, device: str, gpu_share: float) -> None:
    """The trainer process's main loop."""
    os.nice(max(0, nice - os.nice(0)))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch and OpenCV load: their pools take this many
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # never touch the GPU
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s trainer %(levelname)s %(message)s", datefmt="%H:%M:%S")
    import cv2
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    cv2.setNumThreads(threads)  # optical flow and noise readings
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(gpu_share)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            conn.send(run_job(job, train))
        except Exception as exc:  # the one place a failed job is turned into a message: the stream goes on
            conn.send(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")


class TrainerDied(StreamDenoiseError):
    """The trainer process ended without answering."""


class TrainerHung(StreamDenoiseError, TimeoutError):
    """The trainer process overran its deadline and was killed."""


class TrainerProcess:
    """The parent's handle on the trainer process (used from one thread)."""

    def __init__(self, train: Train, threads: int = 1, nice: int = 19, device: str = "cpu", gpu_share: float = 0.25) -> None:
        self._args = (train, threads, nice, device, gpu_share)
        self._proc: Any = None  # multiprocessing's SpawnProcess
        self._conn: Connection | None = None
        self._deadline = 0.0
        self.restarts = 0  # processes replaced after a crash or a hang
        self.pid: int | None = None
        # one writer on the pipe: a job's send blocks until the process reads it (after its imports:
        # seconds on a busy machine), and close() from another thread must not interleave its goodbye
        self._writing = threading.Lock()
        self._reaping = threading.Lock()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, *self._args), name="stream-denoise-trainer", daemon=True)
        self._proc.start()
        child.close()
        self._conn, self.pid = parent, self._proc.pid

    def submit(self, job: Job, deadline_s: float) -> None:
        """Send a job (starting or restarting the process as needed); its outcome must come within
        ``deadline_s`` seconds."""
        with self._writing:
            if self._proc is None or not self._proc.is_alive():
                if self._proc is not None:
                    self.restarts += 1
                    self._reap()
                self._start()
            conn = self._conn
            assert conn is not None
            try:
                conn.send(job)
            except (OSError, ValueError) as exc:  # it died after the check (a broken pipe), or close() killed
                self._reap()  # it mid-send: a failed run, not a dead adapt thread
                raise TrainerDied(f"the trainer process could not take the job ({exc})") from None
        self._deadline = time.monotonic() + deadline_s

    def poll(self, timeout: float) -> Outcome | str | None:
        """The outcome (an error line if the job failed), or None while it runs; TrainerDied or
        TrainerHung (the process killed) when it will never come."""
        assert self._conn is not None and self._proc is not None
        try:
            if self._conn.poll(timeout):
                return self._conn.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError):
            pass
        if not self._proc.is_alive():
            code = self._proc.exitcode
            self._reap()
            raise TrainerDied(f"the trainer process ended (exit code {code})")
        if time.monotonic() > self._deadline:
            self._reap()
            raise TrainerHung("the trainer process did not answer within its deadline: killed")
        return None

    def _reap(self) -> None:
        with self._reaping:  # close() may reap beside a writer whose send it broke
            if self._proc is not None:
                if self._proc.is_alive():
                    self._proc.kill()
                self._proc.join(timeout=10)
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def close(self, wait_s: float = 2.0) -> None:
        """Ask the process to end (it finishes nothing); kill it when it does not within ``wait_s``.
        When another thread is still writing a job to it, kill it first: a second writer would
        corrupt the pipe, and the kill ends that send (a failed run for the writer)."""
        got = self._writing.acquire(timeout=wait_s)
        if not got:
            proc = self._proc
            if proc is not None and proc.is_alive():
                proc.kill()
            got = self._writing.acquire(timeout=10)
        try:
            if got and self._proc is not None and self._proc.is_alive() and self._conn is not None:
                try:
                    self._conn.send(None)
                except OSError:
                    pass
                self._proc.join(timeout=wait_s)
            self._reap()
            with self._reaping:
                self._proc = None
        finally:
            if got:
                self._writing.release()
