"""The adaptation controller of one camera's pipeline: sample, trigger, train, check, swap.

Threads: ``observe`` and ``swap_into`` run on the pipeline's inference thread and cost a crop copy
now and then and a noise reading every 15th frame; everything slow runs on the adapter's own
thread (``adapt``) or in the trainer process: sending a job, waiting for it, loading the new ONNX
Runtime session beside the running one, writing the model store. The new session is handed to the
inference thread, which swaps it in between two frames (``Denoiser.swap``): the frames already
waiting for look-ahead go on, so no frame is lost or repeated, and every frame out carries the
generation of the model that made it.

Triggers: a run starts when the sample is ready (``min_clips`` training clips and the held-out
clips) and one is due: the first of this process, a drift of the measured noise (``drift``: the
sample starts again from the new noise), or ``interval_s`` after the previous run ended. A
candidate is swapped in when its held-out loss is at least ``margin`` (relative) below the running
model's; a run that began before a drift is discarded (its clips no longer describe the camera).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import model_files
from ..config import AdaptConfig, ModelConfig
from ..errors import ConfigError, ModelError, StreamDenoiseError
from ..frame import Frame
from ..noise_level import NoiseTracker
from ..wire import redact
from .reservoir import Reservoir
from .store import ModelStore
from .trainer import Job, Outcome, Train, TrainerProcess, fine_tune_candidate

if TYPE_CHECKING:
    from ..backends.onnx_cpu import OnnxRuntimeBackend
    from ..denoiser import Denoiser

log = logging.getLogger(__name__)

RETRY_S = 10.0  # after a failed run, a crash or a hang: wait this long before the next run
READ_EVERY_S = 0.5  # between two noise readings (the median of the last 6 is the level)


class Adapter:
    def __init__(self, cfg: AdaptConfig, model: ModelConfig, camera: str, denoiser: Denoiser,
                 train: Train = fine_tune_candidate) -> None:
        from ..backends.onnx_cpu import OnnxRuntimeBackend

        if not isinstance(denoiser.backend, OnnxRuntimeBackend) or model.precision != "fp32":
            raise ConfigError("--adapt swaps ONNX Runtime sessions of an fp32 model: use --backend onnxruntime "
                              "(the CPU backend) and --precision fp32")
        base = model_files.resolve(model.model, ".pt")
        if base.suffix != ".pt":
            raise ConfigError(f"--adapt trains the network, which needs its PyTorch file: give a .pt model or a "
                              f"shipped name, not {base}")
        self.cfg, self._model_cfg = cfg, model
        self.camera = redact(camera)
        b = denoiser.backend
        self.layout = {"frames": b.frames, "target": b.target, "stride": b.stride, "noise_planes": b.noise_planes,
                       "arch": b.meta.get("arch")}
        self.store = ModelStore(cfg.dir, self.camera, cfg.keep)
        self.parent: Path = base  # the .pt of the running model: the next run starts from it
        self.generation = 0
        self.reservoir = Reservoir(cfg.slots, cfg.held_clips, cfg.clip_frames, cfg.crop, cfg.sample_every_s)
        self.tracker = NoiseTracker(every=1, keep=6)  # fed every READ_EVERY_S by _watch_noise
        self._latest: np.ndarray | None = None  # the newest input frame's pixels, for the next reading
        self._next_reading = 0.0
        self._ref_level: float | None = None  # noise level when the sample began
        self._epoch = 0  # +1 per new sample (drift)
        self._trainer = TrainerProcess(train, cfg.threads, cfg.nice, cfg.device, cfg.gpu_share)
        self._tmp = Path(tempfile.mkdtemp(prefix="stream-denoise-adapt-"))
        self._jobs = 0
        self._current_dir: Path | None = None  # the job folder of the running adapted model (not in the store)
        self._lock = threading.Lock()
        self._pending: tuple[OnnxRuntimeBackend, int] | None = None
        self._ours: list[OnnxRuntimeBackend] = []  # backends made here (the configured one is the pipeline's)
        self._due = True  # the first run of this process
        self._not_before = 0.0
        self._last_end = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # counters (health.METRICS adapt_*)
        self.steps = 0
        self.runs = 0
        self.swaps = 0
        self.rejected = 0
        self.failures = 0
        self.last_gain = math.nan
        self.training = False
        self._resume(denoiser)

    # ------------------------------------------------------------------ inference thread
    def observe(self, frame: Frame) -> None:
        """One input frame: the rolling sample; the newest frame for the noise reading (taken on the
        adapter's thread: a reading of a 640x360 frame costs 15-30 ms here, too much between two frames)."""
        self.reservoir.offer(frame)
        self._latest = frame.pixels

    def swap_into(self, denoiser: Denoiser) -> None:
        """Between two frames: switch to a candidate that is loaded and waiting, if any."""
        if self._pending is None:
            return
        with self._lock:
            backend, gen = self._pending  # type: ignore[misc]
            self._pending = None
            old = denoiser.swap(backend, gen)
            ours = next((b for b in self._ours if b is old), None)
            if ours is not None:
                self._ours.remove(ours)
        if ours is not None:
            ours.close()  # the inference thread was its only user
        log.info("adapt: generation %d denoises from the next frame", gen)

    # ------------------------------------------------------------------ adapter thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="adapt", daemon=True)
        self._thread.start()

    def _watch_noise(self) -> None:
        """Every ``READ_EVERY_S``: a noise reading of the newest frame; a drift from the reading the
        sample began with starts a new sample and makes a run due."""
        now = time.monotonic()
        pixels, self._latest = self._latest, None
        if pixels is None or now < self._next_reading:
            return
        self._next_reading = now + READ_EVERY_S
        self.tracker.update(pixels)
        if len(self.tracker.readings) < (self.tracker.readings.maxlen or 1):
            return  # the level is the median of a full set of readings
        level = float(np.mean(self.tracker.sigmas[0]))  # pixel scale: the coarse one rises with texture
        if self._ref_level is None:
            self._ref_level = level
            return
        ratio = level / max(self._ref_level, 1e-3)
        if ratio > 1 + self.cfg.drift or ratio < 1 / (1 + self.cfg.drift):
            log.info("adapt: the noise changed (reading %.1f -> %.1f): new sample, then a training run",
                     self._ref_level, level)
            self.reservoir.clear()
            self.tracker.reset()
            self._ref_level = None
            self._epoch += 1
            self._due = True

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self._watch_noise()
            now = time.monotonic()
            interval = self.cfg.interval_s
            due = self._due or (interval is not None and self.runs > 0 and now - self._last_end >= interval)
            if not due or now < self._not_before or not self.reservoir.ready(self.cfg.min_clips):
                continue
            self._due = False
            try:
                self._run_once()
            except StreamDenoiseError as exc:  # a crash, a hang, an unloadable candidate: log it, go on
                self.failures += 1
                self._due = True
                self._not_before = time.monotonic() + RETRY_S
                log.warning("adapt: %s; the stream goes on, next run in %.0f s", exc, RETRY_S)
            finally:
                self.training = False
                self._last_end = time.monotonic()

    def _run_once(self) -> None:
        train, held = self.reservoir.snapshot()
        epoch, self._jobs = self._epoch, self._jobs + 1
        workdir = self._tmp / f"job-{self._jobs}"
        workdir.mkdir()
        job = Job(self.parent, train, held, workdir, self.cfg.minutes, self.cfg.steps, self.cfg.batch, self.cfg.patch,
                  seed=self._jobs)
        self.training = True
        log.info("adapt: training run %d from generation %d on %d clips (%d held out), budget %g min",
                 self._jobs, self.generation, len(train), len(held), self.cfg.minutes)
        self._trainer.submit(job, self.cfg.minutes * 60 + self.cfg.hang_s)
        try:
            while True:
                if self._stop.is_set():
                    return
                self._watch_noise()
                outcome = self._trainer.poll(0.25)
                if outcome is not None:
                    break
        except StreamDenoiseError:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        self.runs += 1
        if isinstance(outcome, str):
            shutil.rmtree(workdir, ignore_errors=True)
            raise StreamDenoiseError(f"training run {self._jobs} failed: {outcome}")
        self.steps += outcome.steps
        self.last_gain = outcome.gain
        verdict = f"held-out {outcome.objective} loss {outcome.parent_loss:.6f} -> {outcome.candidate_loss:.6f} " \
                  f"({-100 * outcome.gain:+.1f} %), {outcome.steps} steps in {outcome.seconds:.0f} s"
        if epoch != self._epoch:
            log.info("adapt: run %d discarded: the noise changed while it trained (%s)", self._jobs, verdict)
            shutil.rmtree(workdir, ignore_errors=True)
            return
        if not outcome.gain >= self.cfg.margin:
            self.rejected += 1
            log.info("adapt: candidate rejected: %s; needs %.1f %% lower", verdict, 100 * self.cfg.margin)
            shutil.rmtree(workdir, ignore_errors=True)
            return
        self._accept(outcome, workdir, verdict)

    def _accept(self, outcome: Outcome, workdir: Path, verdict: str) -> None:
        from ..backends.onnx_cpu import OnnxRuntimeBackend

        gen = self.generation + 1
        try:
            backend = OnnxRuntimeBackend(outcome.candidate_onnx, self._model_cfg.threads, lanes=self._model_cfg.onnxruntime.lanes)
        except ModelError:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        meta = {"generation": gen, "parent": self.parent.name, "source": self.camera,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "noise_reading": outcome.noise_reading,
                "validation": {"objective": outcome.objective, "parent_loss": outcome.parent_loss,
                               "loss": outcome.candidate_loss, "gain": round(outcome.gain, 5)},
                "steps": outcome.steps, "seconds": outcome.seconds, "layout": self.layout}
        stored = self.store.save(gen, outcome.candidate_pt, outcome.candidate_onnx, meta)
        previous = self._current_dir
        if stored is not None:
            self.parent, self._current_dir = stored.pt, None
            shutil.rmtree(workdir, ignore_errors=True)
        else:  # not kept on disk: the job folder holds the running model until the next one
            self.parent, self._current_dir = outcome.candidate_pt, workdir
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)  # its session has read the file
        self.generation = gen
        self.swaps += 1
        with self._lock:
            if self._pending is not None:  # never swapped in (no frame came): replaced by this one
                self._pending[0].close()
                self._ours.remove(self._pending[0])
            self._ours.append(backend)
            self._pending = (backend, gen)
        log.info("adapt: generation %d accepted: %s%s", gen, verdict, f"; kept as {stored.onnx}" if stored else "")

    # ------------------------------------------------------------------ start-up, status, shutdown
    def _resume(self, denoiser: Denoiser) -> None:
        """Start from the newest good adapted model of this camera, if any."""
        from ..backends.onnx_cpu import OnnxRuntimeBackend

        for stored in self.store.newest(self.layout):
            try:
                backend = OnnxRuntimeBackend(stored.onnx, self._model_cfg.threads, lanes=self._model_cfg.onnxruntime.lanes)
            except ModelError as exc:
                log.warning("adapt: skipping %s: %s", stored.onnx, exc)
                continue
            self._ours.append(backend)
            denoiser.swap(backend, stored.generation)
            self.parent, self.generation = stored.pt, stored.generation
            log.info("adapt: resuming from %s (generation %d, held-out gain %s)", stored.onnx, stored.generation,
                     stored.meta.get("validation", {}).get("gain"))
            return

    def status(self) -> str:
        gain = "-" if math.isnan(self.last_gain) else f"{100 * self.last_gain:+.1f}%"
        return (f"adapt gen {self.generation} samples {self.reservoir.samples} steps {self.steps} gain {gain} "
                f"swaps {self.swaps} rejected {self.rejected} restarts {self._trainer.restarts}"
                f"{' training' if self.training else ''}")

    def snapshot(self) -> dict[str, Any]:
        return {"adapt_generation": self.generation, "adapt_samples": self.reservoir.samples,
                "adapt_steps": self.steps, "adapt_last_gain": self.last_gain, "adapt_runs": self.runs,
                "adapt_swaps": self.swaps, "adapt_rejected": self.rejected, "adapt_failures": self.failures,
                "adapt_trainer_restarts": self._trainer.restarts, "adapt_training": int(self.training)}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._trainer.close()
        for b in self._ours:
            b.close()
        self._ours.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)
