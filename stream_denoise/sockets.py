"""What the publisher and the subscriber share: ZeroMQ's errors in one line, socket timings, and the
CURVE keys (:func:`keygen` makes them; the loaders turn files into keys, or one line saying why not)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import zmq
import zmq.auth

from .errors import PublishError

LINGER_MS = 100
POLL_MS = 100


def zmq_reason(exc: zmq.ZMQError) -> str:
    return exc.strerror or str(exc)


def endpoint_of(sock: zmq.Socket) -> str:
    """The endpoint a socket last bound or connected (``tcp://host:*`` resolved to its port)."""
    ep = sock.getsockopt(zmq.LAST_ENDPOINT)
    return ep.decode() if isinstance(ep, bytes) and ep else ""


def load_keypair(path: str | Path) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise PublishError(f"cannot read key file {path}: {exc}") from None
    if not secret:
        raise PublishError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public(key: bytes | str | Path) -> bytes:
    """A Z85 public key given as 40 characters or as a key file path."""
    if isinstance(key, (bytes, str)) and len(key) == 40 and not Path(os.fsdecode(key)).exists():
        return key.encode() if isinstance(key, str) else key
    try:
        public, _ = zmq.auth.load_certificate(os.fsdecode(key))
    except (OSError, ValueError) as exc:
        raise PublishError(f"cannot read public key {os.fsdecode(key)}: {exc}") from None
    return public


def keygen(directory: str | Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Create ``DIR/NAME.key`` (public, share it) and ``DIR/NAME.key_secret`` (mode 0600)."""
    d = Path(directory)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    if not overwrite and (public.exists() or secret.exists()):
        raise PublishError(f"{public} or {secret} already exists (refusing to overwrite a key)")
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=d, prefix=f".{name}.") as tmp:  # renamed into place once whole
            pub_path, sec_path = zmq.auth.create_certificates(tmp, name)
            os.chmod(sec_path, 0o600)
            os.replace(sec_path, secret)
            os.replace(pub_path, public)
    except OSError as exc:
        raise PublishError(f"cannot write keys in {d}: {exc}") from None
    return public, secret
