"""Output files: never over an input or another output, never half-written under their final name.

:func:`check_outputs` is the output-path rule every command applies before it opens anything;
:func:`partial_path` names the temporary file a writer fills before ``os.replace`` gives it its final
name (an interrupted or killed run leaves at most ``NAME.PID.part``, never a corrupt ``NAME``);
:func:`atomic_write` does both for a file written in one go.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import ConfigError

PathLike = str | os.PathLike[str]
Named = tuple[str, PathLike | None]  # (what the user calls it: "--output", "input"; its path or None)


def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve()


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file: the same resolved path (symlinks followed), or, when both
    exist, the same inode (hard links)."""
    ra, rb = _resolved(a), _resolved(b)
    if ra == rb:
        return True
    try:
        return os.path.samefile(ra, rb)
    except OSError:
        return False


def output_clash(inputs: Iterable[Named], outputs: Iterable[Named]) -> tuple[str, str] | None:
    """(the output's name, a one-line message) for the first output that resolves to an input or to
    another output, else None. Entries whose path is None are not checked."""
    ins = [(name, p) for name, p in inputs if p is not None]
    outs = [(name, p) for name, p in outputs if p is not None]
    for i, (name, out) in enumerate(outs):
        for what, src in ins:
            if same_file(out, src):
                return name, f"{name} {out} is the same file as {what} {src}: refusing to overwrite an input"
        for other, prev in outs[:i]:
            if same_file(out, prev):
                return name, f"{name} and {other} are the same file ({out}): give each output its own path"
    return None


def check_outputs(inputs: Iterable[Named], outputs: Iterable[Named]) -> None:
    """The output-path rule: ConfigError (one line) when an output resolves to an input or to another output."""
    clash = output_clash(inputs, outputs)
    if clash is not None:
        raise ConfigError(clash[1])


def file_source(uri: str) -> str | None:
    """``uri`` when it names a local file (not rtsp://, not a camera), for :func:`check_outputs`."""
    return None if "://" in uri or uri.isdigit() or uri.startswith("/dev/video") else uri


def ipc_path(endpoint: str) -> str | None:
    """The socket file of an ``ipc://`` endpoint (ZeroMQ replaces it on bind), else None."""
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None


def partial_path(path: PathLike) -> Path:
    """Where a writer puts ``path``'s bytes until it is finished: ``NAME.PID.part`` beside it."""
    p = Path(path)
    return p.with_name(f"{p.name}.{os.getpid()}.part")


def umask() -> int:
    """The process's file-creation mask, read without changing it (``os.umask`` sets it: a race with
    other threads creating files); Linux >= 4.7 shows it in /proc/self/status, elsewhere 0o022."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to a temporary file in the same folder, fsync, then rename over ``path``.
    The file gets ``mode``, by default what ``open`` would give a new file (0666 less the umask):
    ``mkstemp`` makes 0600, which another user, say a Triton server reading a model repository,
    cannot read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
