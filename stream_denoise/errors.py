"""Errors raised by stream_denoise.

StreamDenoiseError
├── ConfigError            (ValueError)       bad config file, flag or value
├── SourceError            (ConnectionError)  a source cannot be opened or read
│   └── SourceTimeout      (TimeoutError)     open or read took longer than allowed
├── ModelError             (ValueError)       missing, malformed or incompatible model file
├── BackendUnavailable     (RuntimeError)     the requested backend cannot run here (no GPU, no TensorRT...)
├── EngineError            (RuntimeError)     a TensorRT engine could not be built or loaded
├── PublishError           (OSError)          the ZeroMQ endpoint cannot be bound/connected
├── OutputError            (OSError)          an output file cannot be written or finished
└── MessageError           (ValueError)       a received message is malformed or hostile

Every third-party error is translated into one of these exactly once, at the module that talks to
the third party (``raise ... from exc``). The CLI prints ``str(error)`` as one line and exits non-zero.
"""

from __future__ import annotations


class StreamDenoiseError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1


class ConfigError(StreamDenoiseError, ValueError):
    exit_code = 2


class SourceError(StreamDenoiseError, ConnectionError):
    exit_code = 3


class SourceTimeout(SourceError, TimeoutError):
    pass


class ModelError(StreamDenoiseError, ValueError):
    exit_code = 4


class BackendUnavailable(StreamDenoiseError, RuntimeError):
    exit_code = 5


class EngineError(StreamDenoiseError, RuntimeError):
    exit_code = 5


class PublishError(StreamDenoiseError, OSError):
    exit_code = 6


class OutputError(StreamDenoiseError, OSError):
    exit_code = 7


class MessageError(StreamDenoiseError, ValueError):
    pass
