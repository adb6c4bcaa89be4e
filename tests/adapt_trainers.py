"""Trainer functions for ``run --adapt`` tests (``Pipeline(adapt_train=...)``), run in the trainer process.

Each has the signature of ``stream_denoise.adapt.trainer.fine_tune_candidate``: a Job in, the
candidate's .pt and a summary out. ``MARKER_ENV`` names a folder where they count their calls
(the trainer process is replaced after a crash, so the count lives on disk).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

MARKER_ENV = "STREAM_DENOISE_TEST_TRAINER_DIR"


def _call_number() -> int:
    d = Path(os.environ[MARKER_ENV])
    n = len(list(d.glob("call-*"))) + 1
    (d / f"call-{n}").touch()
    return n


def copy_parent(job: Any) -> tuple[Path, dict]:
    """The running model unchanged (held-out gain exactly 0)."""
    from stream_denoise.model import load_model, save_model

    out = job.workdir / "candidate.pt"
    save_model(load_model(job.parent), out, trained="test: copy of the parent")
    return out, {"steps": 0}


def sabotaged(job: Any) -> tuple[Path, dict]:
    """Worse weights than the running model's: every weight perturbed by 50 % noise."""
    import torch

    from stream_denoise.model import load_model, save_model

    model = load_model(job.parent)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.5 * torch.randn(p.shape, generator=g))
    out = job.workdir / "candidate.pt"
    save_model(model, out, trained="test: sabotaged")
    return out, {"steps": 1}


def crash_then_hang(job: Any) -> tuple[Path, dict]:
    """First call: the process dies; second: it hangs; then: the parent unchanged."""
    n = _call_number()
    if n == 1:
        os._exit(3)
    if n == 2:
        time.sleep(3600)
    return copy_parent(job)
