"""Adapted models on disk, per camera: ``DIR/<camera>/gen-NNNN.{pt,onnx,json}``.

The ``.json`` is written last (each file to a temporary name in the folder, then renamed: see
``files.atomic_write``), so a model is complete exactly when its metadata exists. Metadata:
generation, parent (the model it was fine-tuned from), source (the camera, credentials removed),
created (UTC), noise reading of its training clips, validation (objective, held-out losses of the
parent and of the model, relative gain), steps and seconds of training, and the base network's
layout (frames, target, stride, noise planes, architecture). ``newest()`` lists the complete
models newest first; the caller loads them and skips the ones that fail. At most ``keep`` models
stay per camera. A folder that cannot be written (read-only, disk full) costs one log line and
adaptation goes on in memory.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import atomic_write

log = logging.getLogger(__name__)

_NAME = re.compile(r"^gen-(\d{4,})\.json$")


@dataclass(frozen=True)
class Stored:
    generation: int
    pt: Path
    onnx: Path
    meta: dict[str, Any]


def camera_dir(root: Path, camera: str) -> Path:
    """The folder of one camera's models: its name with characters a file name cannot hold replaced."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", camera).strip("-.")[:100] or "camera"
    return Path(root) / safe


class ModelStore:
    def __init__(self, root: Path, camera: str, keep: int = 5) -> None:
        self.dir = camera_dir(root, camera)
        self.keep = keep
        self.failed = False  # a write failed (logged once)

    def newest(self, layout: dict[str, Any]) -> Iterator[Stored]:
        """Complete models of this camera made for ``layout``, newest first; each one that is
        unreadable or made for another network is skipped with one log line."""
        try:
            names = sorted((p for p in self.dir.iterdir() if _NAME.match(p.name)), reverse=True)
        except OSError:
            return
        for meta_path in names:
            gen = int(_NAME.match(meta_path.name).group(1))  # type: ignore[union-attr]
            try:
                meta = json.loads(meta_path.read_text())
                if not isinstance(meta, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as exc:
                log.warning("adapt: skipping %s: unreadable metadata (%s)", meta_path, str(exc)[:120])
                continue
            pt, onnx = meta_path.with_suffix(".pt"), meta_path.with_suffix(".onnx")
            if meta.get("layout") != layout:
                log.warning("adapt: skipping %s: made for another network (%s, running %s)", meta_path,
                            meta.get("layout"), layout)
            elif not (pt.is_file() and onnx.is_file()):
                log.warning("adapt: skipping %s: its model files are missing", meta_path)
            else:
                yield Stored(gen, pt, onnx, meta)

    def save(self, generation: int, pt: Path, onnx: Path, meta: dict[str, Any]) -> Stored | None:
        """Copy a model in (the .json last); None (one log line per store) when the folder cannot
        be written."""
        base = self.dir / f"gen-{generation:04d}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(base.with_suffix(".pt"), Path(pt).read_bytes())
            atomic_write(base.with_suffix(".onnx"), Path(onnx).read_bytes())
            atomic_write(base.with_suffix(".json"), json.dumps(meta, indent=1).encode())
        except OSError as exc:
            if not self.failed:
                log.warning("adapt: cannot keep adapted models in %s (%s); adapting in memory only, the stream goes on",
                            self.dir, exc.strerror or exc)
            self.failed = True
            return None
        self._prune()
        return Stored(generation, base.with_suffix(".pt"), base.with_suffix(".onnx"), meta)

    def _prune(self) -> None:
        """Delete all but the newest ``keep`` models (the .json first: a model is never half there)."""
        try:
            metas = sorted((p for p in self.dir.iterdir() if _NAME.match(p.name)), reverse=True)
            for old in metas[self.keep :]:
                for suffix in (".json", ".pt", ".onnx"):
                    old.with_suffix(suffix).unlink(missing_ok=True)
        except OSError as exc:
            log.debug("adapt: pruning %s failed: %s", self.dir, exc)
