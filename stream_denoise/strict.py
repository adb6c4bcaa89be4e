"""The base of every config model: unknown keys are errors, values are frozen, defaults validated.
Config tables live next to what they configure (``config.py``, each backend's options in its module)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
