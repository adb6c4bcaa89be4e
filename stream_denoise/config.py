"""One strict config tree, validated at the edge (TOML file or CLI flags).

Every field has bounds and a docstring; unknown keys are errors (``extra="forbid"``).
Files are read and checked by :mod:`stream_denoise.config_file` (each problem with its line).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .backends import NAMES as BACKEND_NAMES
from .backends.onnx_cpu import OnnxRuntimeOptions
from .backends.tensorrt_engine import TensorRTOptions
from .backends.triton_client import TritonOptions
from .model_files import for_window
from .strict import Strict

Window = Literal["centered", "causal"]
Encoding = Literal["raw", "jpeg", "png"]


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
    """Which network runs and how. Each backend's own options are a table named like it
    (``[model.onnxruntime]``, ``[model.tensorrt]``, ``[model.triton]``), defined in its module; ``auto``
    reads those of each backend it tries."""

    model: str = Field("auto", description="A shipped model name (lite, base, lite-causal) or a path; 'auto' picks for the machine.")
    backend: str = Field("auto", description="One of backends.NAMES; auto prefers tensorrt, then cuda, then onnxruntime.")
    window: Window | None = Field(None, description="centered (K frames around t) or causal (past only); None = the model's own.")
    threads: int | None = Field(None, ge=1, le=256, description="CPU threads for inference (onnxruntime, torch); None = all cores.")
    precision: Literal["fp32", "fp16", "int8"] = Field("fp32", description="Numeric precision of the backend.")
    strength: float = Field(1.0, ge=0.25, le=4.0, description=(
        "How hard a noise-aware network denoises: the noise level it is told is the one measured from the stream "
        "times this. Below 1 keeps more grain and fine detail; above 1 removes more noise and lowers the lift of "
        "shadows under strong noise (BENCHMARKS.md, 'Strength'). 1 = as trained."))
    onnxruntime: OnnxRuntimeOptions = Field(default_factory=OnnxRuntimeOptions, description="backend onnxruntime.")
    tensorrt: TensorRTOptions = Field(default_factory=TensorRTOptions, description="backend tensorrt.")
    triton: TritonOptions = Field(default_factory=TritonOptions, description="backend triton.")

    @model_validator(mode="before")
    @classmethod
    def _flat_keys(cls, data: Any) -> Any:
        """Files written before the per-backend tables keep working: ``lanes``, ``engines_dir`` and
        ``triton_url`` in ``[model]`` go to their backend's table."""
        if not isinstance(data, dict) or not FLAT_KEYS.keys() & data.keys():
            return data
        data = dict(data)
        for flat, (table, key) in FLAT_KEYS.items():
            if flat in data:
                options = dict(data.get(table) or {})
                if key in options:
                    raise ValueError(f"{flat} and [model.{table}] {key} both given; keep the second")
                options[key] = data.pop(flat)
                data[table] = options
        return data

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if v not in BACKEND_NAMES:
            raise ValueError(f"unknown backend {v!r}; choose one of {', '.join(map(repr, BACKEND_NAMES))}")
        return v


FLAT_KEYS = {"lanes": ("onnxruntime", "lanes"), "engines_dir": ("tensorrt", "engines_dir"), "triton_url": ("triton", "url")}


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
    wire: Literal["stream_denoise", "imagezmq"] = Field(
        "stream_denoise",
        description="Message format: stream_denoise's [topic, header, pixels] (stream_denoise.wire), or imagezmq's "
                    "[metadata, pixels], which imagezmq's ImageHub(open_port=ENDPOINT, REQ_REP=False) reads "
                    "(encoding raw -> recv_image, jpeg -> recv_jpg; no topic part).")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return _check_endpoint(v)

    @model_validator(mode="after")
    def _imagezmq_encoding(self) -> PublishConfig:
        if self.wire == "imagezmq" and self.encoding == "png":
            _fail("imagezmq_png", "wire imagezmq carries raw arrays (recv_image) or JPEG (recv_jpg), not png",
                  ("encoding",), self.encoding)
        return self


def _check_endpoint(v: str) -> str:
    if not re.match(r"^(tcp://[^\s]+:(\d+|\*)|ipc://\S+|inproc://\S+)$", v):
        raise ValueError("must look like tcp://HOST:PORT or ipc:///path")
    return v


class OutputConfig(Strict):
    """Optional recording of the cleaned stream to a file a person can play."""

    path: Path | None = Field(None, description="Cleaned stream: .mkv is lossless FFV1, .mp4 is H.264.")
    input_path: Path | None = Field(
        None, description="Also record the *noisy* input as received (material for `fine-tune`; .mkv lossless)."
    )


_RTSP_PATH = r"^[A-Za-z0-9_.~-]+(/[A-Za-z0-9_.~-]+)*$"


class RtspOutConfig(Strict):
    """The cleaned stream as RTSP (H.264/H.265) for NVRs, VLC and restreamers (``run --rtsp-out``).

    Serve mode (no ``url``): an RTSP server on ``host:port`` serves ``rtsp://HOST:PORT/PATH`` to any
    number of clients. Push mode (``url``): the stream is published to a media server the user runs
    (MediaMTX, go2rtc) with RTSP ANNOUNCE/RECORD. See :mod:`stream_denoise.rtsp_out`.
    """

    url: str | None = Field(
        None, description="Push mode: publish to this media server (rtsp://host:8554/path; user:pass@ allowed). "
                          "Unset: serve mode.")
    host: str = Field("127.0.0.1", min_length=1, description="Serve mode: the address to listen on (0.0.0.0: every interface).")
    port: int = Field(8554, ge=0, le=65535, description="Serve mode: the RTSP port (0: any free port, logged).")
    path: str | None = Field(None, max_length=128, pattern=_RTSP_PATH,
                             description="Serve mode: the stream's path; default the camera's name ('stream' for one camera without a name).")
    username: str | None = Field(None, min_length=1, description="Serve mode: require basic authentication with this user...")
    password: str | None = Field(None, description="...and this password.")
    codec: Literal["h264", "h265"] = Field("h264", description="Video codec of the stream.")
    encoder: Literal["auto", "software", "nvenc"] = Field(
        "auto", description="software: libx264/libx265; nvenc: NVIDIA's hardware encoder (needs a GPU); "
                            "auto: nvenc where an NVIDIA GPU is visible and the encoder opens, else software.")
    crf: int = Field(18, ge=0, le=51, description="Constant quality (lower is better; nvenc: cq) when bitrate_kbps is unset.")
    bitrate_kbps: int | None = Field(None, ge=50, le=200_000,
                                     description="Target bit rate in kbit/s (rate capped over one second) instead of crf.")
    preset: str = Field("superfast", pattern=r"^[a-z0-9]+$",
                        description="Encoder speed preset (x264/x265: ultrafast..medium; nvenc: p1..p7).")
    gop_s: float = Field(1.0, gt=0, le=10, description="Seconds between keyframes; a client that joins also gets one at once.")
    threads: int = Field(1, ge=0, le=64, description="Software encoder threads (0: the encoder's choice; sliced, no added latency).")
    fps: float | None = Field(None, gt=0, le=240, description="Nominal frame rate of the stream; default: the source's.")
    queue_size: int = Field(2, ge=1, le=64, description="Frames waiting for the encoder; when full the oldest is dropped (counted).")
    open_timeout_s: float = Field(5.0, gt=0, le=120, description="Limit for starting the server or connecting to the push target.")
    io_timeout_s: float = Field(5.0, gt=0, le=120, description="Limit for one write; a stalled peer is dropped and reconnected.")
    backoff_initial_s: float = Field(0.25, gt=0, le=60, description="First reconnect (or server restart) delay.")
    backoff_max_s: float = Field(2.0, gt=0, le=600, description="Cap of the exponential reconnect delay.")
    gst_python: str | None = Field(
        None, description="Serve mode: a Python with GStreamer's gi bindings and gst-rtsp-server to run the server; "
                          "default: this Python if it has them, else /usr/bin/python3.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^rtsps?://[^\s/]+(/\S*)?$", v, re.IGNORECASE):
            raise ValueError("must look like rtsp://HOST[:PORT]/PATH")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and any(part in (".", "..") for part in v.split("/")):
            raise ValueError("no '.' or '..' parts")
        return v

    @model_validator(mode="after")
    def _mode(self) -> RtspOutConfig:
        if self.url is not None and (self.username is not None or self.password is not None):
            _fail("auth_in_push", "push mode takes credentials in the URL (rtsp://user:pass@host/path)",
                  ("username" if self.username is not None else "password",), None)
        if (self.username is None) != (self.password is None):
            _fail("half_auth", "set both username and password, or neither",
                  ("password" if self.username is not None else "username",), None)
        return self

    @property
    def push(self) -> bool:
        return self.url is not None


def rtsp_path_for(name: str | None) -> str:
    """The default serve path of a camera: its name with characters a path cannot hold replaced."""
    path = re.sub(r"[^A-Za-z0-9_.~-]+", "-", name or "").strip("-.")
    return path[:128] or "stream"


class AdaptConfig(Strict):
    """Live self-adaptation (``run --adapt``, :mod:`stream_denoise.adapt`): a background process
    fine-tunes the model on a rolling sample of the stream and the pipeline swaps to each candidate
    that beats the running model on held-out recent frames."""

    dir: Path = Field(Path("adapted"), description="Adapted models are kept in DIR/<camera name>/ (gen-NNNN.onnx/.pt/.json).")
    clip_frames: int = Field(16, ge=10, le=64, description="Consecutive frames in one sampled clip.")
    crop: int = Field(256, ge=32, le=4096, multiple_of=4,
                      description="Side of the square region each clip keeps (a random place per clip; whole frames when smaller).")
    slots: int = Field(12, ge=2, le=256, description="Training clips the rolling sample holds (reservoir: spread over time).")
    held_clips: int = Field(2, ge=1, le=16, description="Newest clips kept out of training: candidates are scored on them.")
    sample_every_s: float = Field(2.0, gt=0, le=3600, description="Seconds between the starts of two sampled clips.")
    min_clips: int = Field(4, ge=1, le=256, description="Training clips needed before a training run starts.")
    minutes: float = Field(1.0, gt=0, le=120, description="Training budget of one run (minutes).")
    steps: int = Field(3000, ge=1, le=1_000_000, description="Step cap of one run.")
    batch: int = Field(4, ge=1, le=256, description="Windows per training step.")
    patch: int = Field(64, ge=16, le=512, multiple_of=4, description="Side of the training patches.")
    interval_s: float | None = Field(600.0, gt=0, description="Start a run this long after the previous one ended; None: only on drift.")
    drift: float = Field(0.5, gt=0, le=100,
                         description="A noise reading this much above or below (relative) the sample's start begins a new sample and a run.")
    margin: float = Field(0.02, ge=0, le=1,
                          description="A candidate must lower the held-out loss by this fraction of the running model's to be swapped in.")
    threads: int = Field(1, ge=1, le=256, description="Torch threads of the trainer process.")
    nice: int = Field(19, ge=0, le=19, description="Niceness of the trainer process (19: only idle CPU).")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Where the trainer runs.")
    gpu_share: float = Field(0.25, gt=0, le=1, description="device = cuda: the share of the GPU's memory the trainer may use.")
    hang_s: float = Field(120.0, gt=0, le=86400,
                          description="A run that has not answered this long after its budget is killed and the trainer restarted.")
    keep: int = Field(5, ge=1, le=1000, description="Adapted models kept per camera (older ones are deleted).")

    @model_validator(mode="after")
    def _fits(self) -> AdaptConfig:
        if self.min_clips > self.slots:
            _fail("min_clips", f"min_clips ({self.min_clips}) cannot exceed slots ({self.slots}): no run would start",
                  ("min_clips",), self.min_clips)
        return self


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
    metrics_host: str = Field("127.0.0.1", min_length=1, description="Address of the metrics server (0.0.0.0 in containers).")
    rtsp_out: RtspOutConfig | None = Field(None, description="Also serve or push the cleaned stream over RTSP.")
    adapt: AdaptConfig | None = Field(None, description="Adapt the model to the camera while streaming (run --adapt).")

    @model_validator(mode="after")
    def _something_to_do(self) -> RunConfig:
        if self.publish is None and self.output.path is None and self.rtsp_out is None:
            raise ValueError("nothing consumes the frames: publish them ([publish], no --no-publish), "
                             "record them (--output, [output] path) or send them over RTSP (--rtsp-out, [rtsp_out])")
        return self

    @model_validator(mode="after")
    def _adapt_swaps_onnxruntime(self) -> RunConfig:
        """run --adapt trains the .pt and swaps ONNX Runtime sessions of fp32 models."""
        if self.adapt is None:
            return self
        if self.model.backend not in ("auto", "onnxruntime") or self.model.precision != "fp32":
            _fail("adapt_backend", "--adapt swaps ONNX Runtime sessions of an fp32 model: use --backend onnxruntime "
                  "(the CPU backend) and --precision fp32", ("model", "backend"), self.model.backend)
        if self.model.model.endswith(".onnx"):
            _fail("adapt_model", "--adapt trains the network, which needs its PyTorch file: give a .pt model or a "
                  "shipped name", ("model", "model"), self.model.model)
        return self

    @model_validator(mode="after")
    def _outputs_apart(self) -> RunConfig:
        """The output-path rule (stream_denoise.files): no output over the source or another output."""
        from .files import file_source, ipc_path, output_clash

        endpoint = self.publish.endpoint if self.publish is not None and self.publish.bind else None
        clash = output_clash([("source.uri", file_source(self.source.uri))],
                             [("output.path", self.output.path), ("output.input_path", self.output.input_path),
                              ("publish.endpoint", ipc_path(endpoint) if endpoint else None)])
        if clash is not None:
            name, message = clash
            _fail("output_clash", message, tuple(name.split(".")), None)
        return self


# =====================================================================================================
# Many cameras in one process (stream_denoise.multicam) and `check-config` for either kind of file.
# =====================================================================================================

LogLevel = Literal["debug", "info", "warning", "error"]


class BatchConfig(Strict):
    """How windows of several cameras are gathered into one backend call (same frame size only)."""

    max_size: int = Field(8, ge=1, le=64, description="Most windows in one inference call.")
    max_wait_ms: float = Field(
        4.0, ge=0, le=100,
        description="After the first window arrives, wait at most this long for other cameras' windows.",
    )


class RuntimeConfig(Strict):
    """How a deployment spreads its per-frame work over processes (stream_denoise.fleet)."""

    decode_workers: int | None = Field(
        None, ge=0, le=256,
        description="Decode processes, each serving several cameras and writing their frames into shared-memory "
                    "rings; None = one per core (at most one per camera); 0 = decode in this process, a thread "
                    "per camera (the one-process runtime).")
    lanes: int | None = Field(
        None, ge=1, le=256,
        description="Inference lanes (threads, each with its own one-thread CPU session); None = one per core, "
                    "or on a GPU one per camera (at most 64).")
    max_frame: tuple[int, int] = Field(
        (1920, 1080),
        description="Largest frame (width, height) a ring slot holds; a larger frame is dropped, counted and "
                    "logged. Shared memory is touched only as far as the frames reach.")

    @field_validator("max_frame")
    @classmethod
    def _frame(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not (16 <= v[0] <= 8192 and 16 <= v[1] <= 8192):
            raise ValueError("max_frame must be [width, height], each 16..8192")
        return v


class CameraConfig(Strict):
    """One camera of a deployment: its source, topic, window and (optionally) its own model."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="Unique name: the frames' source, the default topic and the metrics label.")
    source: SourceConfig = Field(description="Where frames come from; a plain string is taken as the URI.")
    topic: str | None = Field(None, min_length=1, max_length=128,
                              description="ZeroMQ topic of this camera's frames; defaults to the name.")
    window: Window | None = Field(None, description="centered or causal; None = the model's own.")
    max_fps: float | None = Field(None, gt=0, le=1000, description="Drop frames above this rate (newest wins).")
    model: ModelConfig | None = Field(
        None, description="Per-camera override: the keys given here replace those of the deployment's [model].")
    rtsp_out: RtspOutConfig | None = Field(
        None, description="Also serve or push this camera's cleaned stream over RTSP (serve path: the camera's name).")
    endpoint: str | None = Field(
        None, description="Ray deployments only: where this camera publishes (each camera publishes from the host "
                          "running it); default: the deployment's endpoint with its port + the camera's index.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        return v if v is None else _check_endpoint(v)

    @field_validator("source", mode="before")
    @classmethod
    def _uri_shorthand(cls, v: Any) -> Any:
        return {"uri": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_fps_cap(self) -> CameraConfig:
        if self.max_fps is not None and self.source.max_fps is not None and self.max_fps != self.source.max_fps:
            _fail("fps_cap_twice", f"the camera's max_fps is {self.max_fps:g}: set the cap once",
                  ("source", "max_fps"), self.source.max_fps)
        return self

    @property
    def effective_topic(self) -> str:
        return self.topic if self.topic is not None else self.name

    def source_config(self) -> SourceConfig:
        """The source with the camera's name (frames carry it as ``Frame.source``) and fps cap."""
        return self.source.model_copy(update={"name": self.name, "max_fps": self.max_fps or self.source.max_fps})

    def model_config_for(self, default: ModelConfig) -> ModelConfig:
        """``default`` with this camera's overrides (and its window) applied."""
        update: dict[str, Any] = {}
        if self.model is not None:
            update = {k: getattr(self.model, k) for k in self.model.model_fields_set}
        if self.window is not None:
            update["window"] = self.window
            model = update.get("model", default.model)
            if for_window(model, self.window) != model:  # the shipped causal twin, as `run --window causal` does
                update["model"] = for_window(model, self.window)
        return default.model_copy(update=update) if update else default


class RayConfig(Strict):
    """Scale-out over a Ray cluster (stream_denoise.ray_serve): each camera is a Ray actor, inference a
    Ray Serve deployment with dynamic batching (``[batch]``), scaled by replicas across the hosts."""

    address: str | None = Field(None, description="Cluster to join ('auto', 'ray://head:10001'); None starts a local one.")
    replicas: int = Field(2, ge=1, le=1024, description="Inference replicas of each model.")
    replica_cpus: float = Field(1.0, gt=0, le=256, description="CPUs reserved per replica (its ONNX Runtime threads).")
    replica_gpus: float = Field(0.0, ge=0, le=16, description="GPUs reserved per replica (fractions share a GPU).")
    camera_cpus: float = Field(0.5, gt=0, le=64, description="CPUs reserved per camera actor (decode, pre/post, publish).")
    local_cpus: int | None = Field(None, ge=1, le=4096,
                                   description="Local cluster only: CPUs Ray may schedule; default: enough for all actors.")
    retries: int = Field(5, ge=0, le=100, description="Times a window is resent when its replica dies.")
    request_timeout_s: float = Field(30.0, gt=0, le=600, description="Limit for one inference request.")
    shared_memory: bool = Field(True, description="Windows of a camera and a replica on one host travel through "
                                                  "shared memory instead of Ray's object store.")


class DeploymentConfig(Strict):
    """Several cameras in one process: one shared backend per model, one publishing socket."""

    cameras: list[CameraConfig] = Field(min_length=1, max_length=256, description="The cameras ([[cameras]] tables).")
    model: ModelConfig = ModelConfig()
    publish: PublishConfig = PublishConfig()
    batch: BatchConfig = BatchConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    log_level: LogLevel = Field("info", description="Logging level of the process.")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Serve /metrics and /healthz on this port.")
    metrics_host: str = Field("127.0.0.1", min_length=1, description="Address of the metrics server (0.0.0.0 in containers).")
    status_interval_s: float = Field(5.0, gt=0, le=3600, description="Seconds between status lines.")
    max_frames: int | None = Field(None, ge=1, description="Stop each camera after this many frames (tests, demos).")
    ray: RayConfig | None = Field(None, description="Run on a Ray cluster instead of in this process.")

    def camera_endpoint(self, i: int) -> str:
        """Where camera ``i`` publishes in a Ray deployment: its own endpoint, or the deployment's + i."""
        cam = self.cameras[i]
        if cam.endpoint is not None:
            return cam.endpoint
        base = self.publish.endpoint
        if m := re.match(r"^(tcp://.+:)(\d+)$", base):
            return f"{m.group(1)}{int(m.group(2)) + i}"
        return f"{base}-{i}"

    @model_validator(mode="after")
    def _topics_and_names(self) -> DeploymentConfig:
        if self.publish.topic is not None:
            _fail("shared_topic", "topics are set per camera in a deployment ([[cameras]] topic)",
                  ("publish", "topic"), self.publish.topic)
        names: dict[str, int] = {}
        topics: dict[str, int] = {}
        for i, cam in enumerate(self.cameras):
            if cam.name in names:
                _fail("duplicate_camera", f"camera name {cam.name!r} is already used by cameras[{names[cam.name]}]",
                      ("cameras", i, "name"), cam.name)
            names[cam.name] = i
            topic, field = cam.effective_topic, "topic" if cam.topic is not None else "name"
            for other, j in topics.items():
                if topic == other or topic.startswith(other) or other.startswith(topic):
                    why = "is also" if topic == other else "overlaps (ZeroMQ topics match by prefix)"
                    _fail("duplicate_topic", f"topic {topic!r} {why} the topic {other!r} of cameras[{j}]",
                          ("cameras", i, field), topic)
            topics[topic] = i
            if cam.rtsp_out is not None and self.ray is not None:
                _fail("rtsp_out_on_ray", "rtsp_out is not available on Ray deployments (run the cameras in one process)",
                      ("cameras", i, "rtsp_out"), None)
            if cam.endpoint is not None and self.ray is None:
                _fail("endpoint_without_ray", "a camera's own endpoint needs a [ray] deployment "
                      "(in one process all cameras share [publish] endpoint)", ("cameras", i, "endpoint"), cam.endpoint)
        _check_rtsp_servers(self.cameras)
        if self.ray is not None:
            seen: dict[str, int] = {}
            for i in range(len(self.cameras)):
                if self.cameras[i].endpoint is None:  # derived from [publish] endpoint: port + i
                    base = self.publish.endpoint
                    m = re.match(r"^tcp://.+:(\d+|\*)$", base)
                    if m and (m.group(1) == "*" or int(m.group(1)) + i > 65535):
                        _fail("camera_endpoint", f"cannot derive camera {i}'s endpoint from {base!r} (port + {i}): "
                              "give [publish] a numbered port or the camera its own endpoint",
                              ("cameras", i, "endpoint"), None)
                ep = self.camera_endpoint(i)
                if ep in seen:
                    _fail("duplicate_endpoint", f"endpoint {ep!r} is also used by cameras[{seen[ep]}]",
                          ("cameras", i, "endpoint"), ep)
                seen[ep] = i
        return self


def _check_rtsp_servers(cameras: list[CameraConfig]) -> None:
    """Serve-mode cameras on one host:port share one RTSP server: distinct paths, the same server settings."""
    servers: dict[tuple[str, int], tuple[int, RtspOutConfig]] = {}
    paths: dict[tuple[str, int, str], int] = {}
    for i, cam in enumerate(cameras):
        out = cam.rtsp_out
        if out is None or out.push or out.port == 0:
            continue
        key = (out.host, out.port)
        path = out.path or rtsp_path_for(cam.name)
        if (*key, path) in paths:
            _fail("duplicate_rtsp_path", f"rtsp://{out.host}:{out.port}/{path} is also served for cameras[{paths[(*key, path)]}]",
                  ("cameras", i, "rtsp_out", "path"), path)
        paths[(*key, path)] = i
        if key in servers:
            j, first = servers[key]
            for field in ("username", "password", "codec", "gst_python"):
                if getattr(out, field) != getattr(first, field):
                    _fail("rtsp_server_mismatch", f"cameras[{j}] serves on {out.host}:{out.port} with another {field}: "
                          "cameras on one RTSP server share it", ("cameras", i, "rtsp_out", field), None)
        else:
            servers[key] = (i, out)


def _fail(kind: str, message: str, loc: tuple[int | str, ...], value: Any) -> None:
    """Raise a ValidationError located at ``loc`` (so the TOML line of that key can be reported)."""
    from pydantic_core import InitErrorDetails, PydanticCustomError

    detail = InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)
    raise ValidationError.from_exception_data("config", [detail])
