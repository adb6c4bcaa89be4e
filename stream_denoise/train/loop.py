"""One training loop for every objective: progress, time budget, checkpoints, resume, seed."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

StepFn = Callable[[np.random.Generator], torch.Tensor]  # returns the loss of one fresh batch
LOG_EVERY_S = 60.0  # without a progress bar, a log line this often


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively: a CUDA GPU that supports it, or a CPU
    with AMX or AVX512-BF16 (there a bfloat16-autocast ``base`` training step in channels-last takes
    69 ms instead of 196 ms on two Xeon cores; without them bfloat16 is emulated and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(bool(getattr(cpu, f, lambda: False)()) for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return False


PRECISIONS = ("auto", "bfloat16", "float32")  # training arithmetic (``use_bf16``)


def use_bf16(precision: str, device: torch.device) -> bool:
    """``precision``: auto (bfloat16 where ``native_bf16``), bfloat16 or float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose auto, bfloat16 or float32")
    return native_bf16(device) if precision == "auto" else precision == "bfloat16"


def fit(model: torch.nn.Module, step_loss: StepFn, *, steps: int, minutes: float | None = None,
        lr: float = 1e-3, seed: int = 0, checkpoint: Path | None = None, checkpoint_every: int = 200,
        resume: bool = True, validate: Callable[[], float] | None = None, validate_every: int = 100,
        progress: bool = True, bf16: bool = False, average: float = 0.0,
        schedule: Callable[[int], float] | None = None, on_step: Callable[[int], None] | None = None,
        meta: Callable[[], dict] | None = None) -> dict:
    """Adam + cosine decay for ``steps`` steps or ``minutes``, whichever ends first.

    The decay follows whichever budget is nearer its end (the step count or the clock), so a run
    that the time budget stops still ends at a learning rate near zero rather than mid-schedule.
    A resumed run starts a new time budget, and with it the clock's part of the schedule.
    With ``validate`` (a held-out loss, lower is better) the best weights seen are kept (early
    stopping; the last weights are validated too). ``average``: a decay in (0, 1) keeps an
    exponential moving average of the weights (``Average``), and the averaged weights are the ones
    validated and returned. ``bf16``: the training steps run under bfloat16
    autocast with the model in channels-last memory (weights, optimiser and loss stay float32;
    validation runs in float32, so early stopping compares like with like). Returns a summary:
    steps done, seconds, last/best losses.

    For training that accumulates over many runs (``pretrain``): ``schedule(step)`` gives the
    learning rate's factor at a cumulative step instead of the cosine; ``on_step(step)`` runs
    before each step's batch is drawn; ``meta()`` is stored in every checkpoint (read it back with
    ``checkpoint_meta``). A run that resumes from a checkpoint continues bit for bit as the run
    that wrote it would have (same weights, optimiser, sampler generator and ``meta``).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    if bf16:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start_step = 0
    if checkpoint is not None and resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state = state["rng"]
        start_step = int(state["step"])
        log.info("resumed from %s at step %d", checkpoint, start_step)
    avg = Average(model, average) if average else None
    if avg is not None and start_step and "average" in state:
        avg.load(state["average"])
    best_val, best_state = math.inf, None
    if validate is not None:
        best_val = validate()
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
        log.info("validation loss before training: %.6f", best_val)
    t0 = time.monotonic()
    budget = minutes * 60 if minutes else math.inf
    bar = _bar(steps, start_step, progress)
    ema, step, skipped = None, start_step, 0
    logged = 0.0
    validated = -1
    stop = _StopRequests()
    with stop:
        for step in range(start_step, steps):
            if stop.signal is not None:
                log.info("%s: stopping after step %d (the checkpoint is written)", stop.signal, step)
                step -= 1
                break
            done_frac = min(1.0, max(step / steps, (time.monotonic() - t0) / budget))
            for g in opt.param_groups:
                g["lr"] = lr * (schedule(step) if schedule else 0.5 * (1 + math.cos(math.pi * done_frac)))
            if on_step is not None:
                on_step(step)
            model.train()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = step_loss(rng)
            value = loss.item()
            if not math.isfinite(value):  # a diverging batch: skip it rather than poison the weights
                skipped += 1
                log.warning("step %d: non-finite loss, skipped (%d so far)", step + 1, skipped)
                if skipped > max(10, steps // 100):
                    raise FloatingPointError(f"training diverged: {skipped} non-finite losses")
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if avg is not None:
                avg.update()
            ema = value if ema is None else 0.98 * ema + 0.02 * value
            elapsed = time.monotonic() - t0
            if bar is None and elapsed >= logged + LOG_EVERY_S:  # no progress bar (a log file): a line a minute
                logged = elapsed
                log.info("step %d: loss EMA %.6f, lr %.2e, %.1f steps/s%s", step + 1, ema, opt.param_groups[0]["lr"],
                         (step + 1 - start_step) / elapsed, f", best validation {best_val:.6f}" if validate else "")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{ema:.5f}", best_val=f"{best_val:.5f}" if validate else "-")
            if validate is not None and (step + 1) % validate_every == 0:
                model.eval()
                with _averaged(avg):
                    best_val, best_state = _keep_best(model, validate, best_val, best_state)
                validated = step
            if checkpoint is not None and (step + 1) % checkpoint_every == 0:
                _save(checkpoint, model, opt, rng, step + 1, avg, meta)
            if elapsed > budget:
                log.info("time budget of %.1f min reached at step %d", minutes, step + 1)
                break
    if bar is not None:
        bar.close()
    done = step + 1
    if validate is not None and validated != step and done > start_step:
        model.eval()
        with _averaged(avg):
            best_val, best_state = _keep_best(model, validate, best_val, best_state)
    if checkpoint is not None:
        _save(checkpoint, model, opt, rng, done, avg, meta)
    if best_state is not None:
        model.load_state_dict(best_state)
    elif avg is not None:
        avg.swap()
    model.to(memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
    return {"steps": done, "seconds": round(time.monotonic() - t0, 1), "loss_ema": ema,
            "best_val": None if validate is None else best_val, "lr_end": opt.param_groups[0]["lr"],
            "skipped_steps": skipped, "precision": "bfloat16 autocast" if bf16 else "float32",
            "stopped_by": stop.signal}


class _StopRequests:
    """While active (in the main thread), SIGINT and SIGTERM ask the training loop to stop between
    steps instead of interrupting one: the step in flight finishes, the checkpoint is written, and
    a resumed run continues exactly. ``signal`` names the first request; a second SIGINT interrupts
    at once (Ctrl-C twice). Elsewhere it changes nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: str | None = None
        self._saved: dict = {}

    def _handler(self, signum: int, _frame: object) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = self.signal or signal.Signals(signum).name

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._saved = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *_exc: object) -> None:
        for s, h in self._saved.items():
            signal.signal(s, h)


class Average:
    """An exponential moving average of a model's floating-point weights and buffers, kept beside
    it: ``update`` after each optimiser step; ``swap`` exchanges the averaged and the live values in
    place (twice restores them). The decay ramps up as (1 + n) / (10 + n) over the first updates,
    so early averages are not dominated by the starting weights."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"average decay must be in (0, 1), got {decay}")
        self.decay, self.n = decay, 0
        self.live = [v for v in model.state_dict().values() if v.is_floating_point()]
        self.avg = [v.detach().clone() for v in self.live]

    def update(self) -> None:
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        self.n += 1
        with torch.no_grad():
            for avg, live in zip(self.avg, self.live):
                avg.lerp_(live, 1 - d)

    def swap(self) -> None:
        with torch.no_grad():
            for live, avg in zip(self.live, self.avg):
                tmp = live.clone()
                live.copy_(avg)
                avg.copy_(tmp)

    def state(self) -> dict:
        return {"n": self.n, "avg": self.avg}

    def load(self, state: dict) -> None:
        self.n = int(state["n"])
        for a, v in zip(self.avg, state["avg"]):
            a.copy_(v)


@contextmanager
def _averaged(avg: Average | None) -> Iterator[None]:
    """The averaged weights in the model while active (nothing without ``avg``)."""
    if avg is None:
        yield
        return
    avg.swap()
    try:
        yield
    finally:
        avg.swap()


def _keep_best(model: torch.nn.Module, validate: Callable[[], float], best_val: float,
               best_state: dict | None) -> tuple[float, dict | None]:
    v = validate()
    if v < best_val:
        return v, {k: t.clone() for k, t in model.state_dict().items()}
    return best_val, best_state


def _save(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, rng: np.random.Generator, step: int,
          avg: Average | None = None, meta: Callable[[], dict] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state, "step": step}
    if avg is not None:
        state["average"] = avg.state()
    if meta is not None:
        state["meta"] = meta()
    torch.save(state, tmp)
    tmp.replace(path)


def checkpoint_meta(path: Path) -> tuple[int, dict] | None:
    """(step, meta) of a checkpoint written by ``fit``, or None where there is none."""
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False, map_location="cpu")
    return int(state["step"]), dict(state.get("meta", {}))


def _bar(total: int, initial: int, enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=2.0)
