"""One strict config tree, validated at the edge (TOML file or CLI flags).

Every field has bounds and a docstring; unknown keys are errors (``extra="forbid"``).
``load_config(path)`` reports the offending key *and its line* in the TOML file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

Backend = Literal["auto", "onnxruntime", "torch", "cuda", "tensorrt"]
Window = Literal["centered", "causal"]
Encoding = Literal["raw", "jpeg", "png"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SourceConfig(Strict):
    """Where frames come from."""

    uri: str = Field(description="rtsp://, rtsps://, a video file path, or a camera ('0', '/dev/video0').")
    name: str | None = Field(None, description="Name used in logs and headers; defaults to the URI.")
    loop: bool = Field(False, description="Files only: start again at the end (demos).")
    realtime: bool = Field(
        False,
        description="Files only: pace reading at the file's frame rate and drop frames like a live camera.",
    )
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    open_timeout_s: float = Field(5.0, gt=0, le=120, description="Limit for opening the source.")
    read_timeout_s: float = Field(5.0, gt=0, le=120, description="Limit for one read; a stalled camera raises.")
    reconnect: bool = Field(True, description="Live sources: reconnect after a drop instead of ending.")
    backoff_initial_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay.")
    backoff_max_s: float = Field(10.0, gt=0, le=600, description="Cap of the exponential reconnect delay.")
    max_fps: float | None = Field(None, gt=0, le=1000, description="Drop frames above this rate (newest wins).")
    hwaccel: bool = Field(False, description="Try NVDEC decoding; falls back to software when it fails.")

    @property
    def display_name(self) -> str:
        return self.name or self.uri


class ModelConfig(Strict):
    """Which network runs and how."""

    model: str = Field("auto", description="A shipped model name (lite, base, lite-causal) or a path; 'auto' picks for the machine.")
    backend: Backend = Field("auto", description="auto prefers tensorrt, then cuda, then onnxruntime.")
    window: Window | None = Field(None, description="centered (K frames around t) or causal (past only); None = the model's own.")
    threads: int | None = Field(None, ge=1, le=256, description="CPU threads for inference; None = all cores.")
    precision: Literal["fp32", "fp16", "int8"] = Field("fp32", description="Numeric precision of the backend.")
    engines_dir: Path = Field(Path("engines"), description="Where TensorRT engines and their manifests are cached.")


class CurveConfig(Strict):
    """CURVE encryption + authentication of the publishing socket."""

    server_secret_key: Path = Field(description="Secret key file of the server (from `stream-denoise keygen`).")
    allowed_clients_dir: Path = Field(description="Directory of public key files of the clients allowed in.")


class PublishConfig(Strict):
    """Where cleaned frames go."""

    endpoint: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ endpoint (tcp:// or ipc://).")
    bind: bool = Field(True, description="Bind (server) or connect (to a proxy/forwarder).")
    topic: str | None = Field(None, description="Topic of the messages; defaults to the source name.")
    encoding: Encoding = Field("raw", description="raw BGR24 pixels, or jpeg/png.")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality when encoding = jpeg.")
    sndhwm: int = Field(2, ge=1, le=10000, description="Send high-water mark (messages per subscriber).")
    curve: CurveConfig | None = Field(None, description="Enable CURVE when set.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not re.match(r"^(tcp://[^\s]+:(\d+|\*)|ipc://\S+|inproc://\S+)$", v):
            raise ValueError("must look like tcp://HOST:PORT or ipc:///path")
        return v


class OutputConfig(Strict):
    """Optional recording of the cleaned stream to a file a person can play."""

    path: Path | None = Field(None, description="Cleaned stream: .mkv is lossless FFV1, .mp4 is H.264.")
    input_path: Path | None = Field(
        None, description="Also record the *noisy* input as received (material for `fine-tune`; .mkv lossless)."
    )


class RunConfig(Strict):
    """One camera's pipeline."""

    source: SourceConfig
    model: ModelConfig = ModelConfig()
    publish: PublishConfig | None = PublishConfig()
    output: OutputConfig = OutputConfig()
    queue_size: int = Field(4, ge=1, le=256, description="Frames held between stages (oldest dropped when full).")
    status_interval_s: float = Field(5.0, gt=0, le=3600, description="Seconds between status lines.")
    max_frames: int | None = Field(None, ge=1, description="Stop after this many published frames.")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Serve /metrics and /healthz on this port.")

    @model_validator(mode="after")
    def _something_to_do(self) -> RunConfig:
        if self.publish is None and self.output.path is None:
            raise ValueError("nothing consumes the frames: set publish or output.path")
        return self


def parse(model: type[BaseModel], data: dict[str, Any], text: str | None = None, origin: str = "config") -> Any:
    """Validate ``data`` into ``model``; raise ConfigError naming the key (and its TOML line)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        line = _line_of(text, err["loc"]) if text else None
        where = f"{origin}:{line}: " if line else f"{origin}: "
        raise ConfigError(f"{where}{loc}: {err['msg']}") from None


def load_toml(path: Path, model: type[BaseModel]) -> Any:
    try:
        text = Path(path).read_text()
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(model, data, text, str(path))


def _line_of(text: str, loc: tuple[int | str, ...]) -> int | None:
    """Best-effort line number of the deepest key of ``loc`` present in the TOML text."""
    keys = [str(p) for p in loc if isinstance(p, str)]
    lines = text.splitlines()
    start = 0
    found: int | None = None
    for key in keys:
        pat = re.compile(rf"^\s*(\[+\s*)?([\w.\"-]*\.)?\"?{re.escape(key)}\"?\s*(=|\]|\.)")
        for i in range(start, len(lines)):
            if pat.search(lines[i]):
                found, start = i + 1, i
                break
    return found
