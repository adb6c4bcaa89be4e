"""NVIDIA Triton Inference Server: the network runs on a server, this process sends it windows.

The server holds a model repository made by ``stream-denoise export-triton`` (``export.triton_repository``); its
model config carries the window (``parameters`` frames, target, stride), which is read back here, and
the I/O names, data type and ``max_batch_size``. ``infer`` sends (N, 3K, H, W) in the model's data type
(fp32 or fp16), in requests of at most ``max_batch_size`` windows; Triton's dynamic batcher merges the
requests of several streams. The Triton model name is the ``--model`` value (a shipped name, or a
model file's stem).

``url``: ``host:port`` or ``http://host:port`` (HTTP, port 8000 by default), ``https://host:port``,
or ``grpc://host:port`` (gRPC, port 8001 by default). The client (``tritonclient``) is imported here
only; the HTTP client is not thread-safe (gevent), so each thread that calls ``infer`` gets its own.
Connecting is bounded by ``connect_timeout_s``; a server that cannot be reached, or that does not serve
the model, is ``BackendUnavailable`` with one line.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pydantic import Field

from ..errors import BackendUnavailable, ConfigError, ModelError
from ..planes import Layout
from ..strict import Strict
from . import Capabilities

if TYPE_CHECKING:
    from ..config import ModelConfig

log = logging.getLogger(__name__)


class TritonOptions(Strict):
    """``[model.triton]``: the ``triton`` backend's own options."""

    url: str = Field("localhost:8000",
                     description="The server: host:port or http://host:port (HTTP), grpc://host:port (gRPC).")

CONNECT_TIMEOUT_S = 3.0
NETWORK_TIMEOUT_S = 30.0
DEFAULT_PORTS = {"http": 8000, "https": 443, "grpc": 8001}
DTYPES: dict[str, Any] = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16}
T = TypeVar("T")


def parse_url(url: str) -> tuple[str, str]:
    """(scheme, host:port) of a Triton address; scheme is http (default), https or grpc."""
    m = re.fullmatch(r"\s*(?:(http|https|grpc)://)?([^/\s:]+|\[[0-9a-fA-F:.]+\])(?::(\d{1,5}))?/?\s*", url)
    if not m:
        raise ConfigError(f"Triton URL {url!r} must look like host:port, http://host:port or grpc://host:port")
    scheme = m.group(1) or "http"
    return scheme, f"{m.group(2)}:{m.group(3) or DEFAULT_PORTS[scheme]}"


def _client_module(scheme: str) -> tuple[Any, type[Exception]]:
    """(tritonclient.http or tritonclient.grpc, InferenceServerException), or BackendUnavailable."""
    extra = "grpc" if scheme == "grpc" else "http"
    try:
        if extra == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
        from tritonclient.utils import InferenceServerException
    except ImportError:
        raise BackendUnavailable(f'the triton backend needs the Triton client: pip install "tritonclient[{extra}]"') from None
    return client, InferenceServerException


class TritonBackend:
    name = "triton"

    def __init__(self, url: str, model: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 network_timeout_s: float = NETWORK_TIMEOUT_S) -> None:
        self.scheme, self.address = parse_url(url)
        self.url, self.model = url, model
        self._connect_timeout, self._network_timeout = connect_timeout_s, network_timeout_s
        self._mod, self._server_error = _client_module(self.scheme)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        try:
            self._connect()
        except BaseException:
            self.close()
            raise
        log.info("triton: model %s at %s (%s, %s, max batch %d, window %d/%d)", model, self.url, self.scheme,
                 self._datatype, self.max_batch, self.target, self.frames)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> TritonBackend:
        from ..model_files import model_name

        return cls(cfg.triton.url, model_name(cfg.model))

    # -- the client, one per thread ------------------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.scheme == "grpc":
                client = self._mod.InferenceServerClient(self.address)
            else:
                client = self._mod.InferenceServerClient(self.address, ssl=self.scheme == "https",
                                                         connection_timeout=self._connect_timeout,
                                                         network_timeout=self._network_timeout)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _connect(self) -> None:
        client, model = self._client(), self.model
        if not self._call("cannot reach the Triton server", lambda: self._is_live(client)):
            raise BackendUnavailable(f"the Triton server at {self.url} is not live")
        if not self._call(f"cannot ask Triton for model {model!r}", lambda: self._is_ready(client)):
            raise BackendUnavailable(f"the Triton server at {self.url} has no model {model!r} ready: export one with "
                                     f"`stream-denoise export-triton {model} --out REPOSITORY` and load it")
        self._setup(self._call(f"cannot read the config of model {model!r}", lambda: self._config(client)))

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one client call; the client's errors become one-line BackendUnavailable."""
        try:
            return fn()
        except (self._server_error, OSError) as exc:
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BackendUnavailable(f"{what} at {self.url}: {text[:200]}") from None

    def _is_live(self, client: Any) -> bool:
        if self.scheme == "grpc":
            return bool(client.is_server_live(client_timeout=self._connect_timeout))
        return bool(client.is_server_live())

    def _is_ready(self, client: Any) -> bool:
        if self.scheme == "grpc":
            return bool(client.is_model_ready(self.model, client_timeout=self._connect_timeout))
        return bool(client.is_model_ready(self.model))

    def _config(self, client: Any) -> Mapping[str, Any]:
        if self.scheme == "grpc":
            return client.get_model_config(self.model, as_json=True, client_timeout=self._connect_timeout)["config"]
        return client.get_model_config(self.model)

    def _setup(self, config: Mapping[str, Any]) -> None:
        """Window, I/O names, dtype and batch limit from the model config (JSON form of config.pbtxt)."""
        where = f"Triton model {self.model!r} at {self.url}"
        params = config.get("parameters") or {}
        try:
            layout = Layout.from_meta({k: v["string_value"] for k, v in params.items()
                                       if k in ("frames", "target", "stride", "noise_planes", "map_curve")})
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{where} is not a stream_denoise model (no frames/target/stride parameters): "
                             "export it with `stream-denoise export-triton`") from None
        self.frames, self.target, self.stride, self.noise_planes = (layout.frames, layout.target, layout.stride,
                                                                    layout.noise_planes)
        self.map_curve = layout.curve
        inputs, outputs = config.get("input") or [], config.get("output") or []
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{where} has {len(inputs)} inputs and {len(outputs)} outputs; one of each expected")
        inp, out = inputs[0], outputs[0]
        data_type = str(inp.get("data_type", ""))
        if data_type not in DTYPES:
            raise ModelError(f"{where} takes {data_type or 'an unknown type'}; TYPE_FP32 or TYPE_FP16 expected")
        self.max_batch = int(config.get("max_batch_size", 0))
        self.capabilities = Capabilities(max_batch=self.max_batch or None)
        dims = [int(d) for d in inp.get("dims", [])]
        channels = dims[0] if self.max_batch > 0 else (dims[1] if len(dims) > 1 else -1)
        if channels != layout.channels:
            raise ModelError(f"{where} input {inp.get('name')} has dims {dims}; {layout.channels} channels expected")
        self._in_name, self._out_name = str(inp["name"]), str(out["name"])
        self._dtype, self._datatype = DTYPES[data_type], data_type.removeprefix("TYPE_")

    # -- Backend ---------------------------------------------------------------------------------------

    def infer(self, x: np.ndarray) -> np.ndarray:
        """x: (N, K * block, H, W) float32 (``planes.Layout``) -> (N, 3, H, W) float32; N is split into requests of at
        most ``max_batch`` windows."""
        x = np.ascontiguousarray(x, dtype=self._dtype)
        step = self.max_batch if self.max_batch > 0 else x.shape[0]
        parts = [self._infer(x[i : i + step]) for i in range(0, x.shape[0], step)]
        y = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return y.astype(np.float32, copy=False)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        client, mod = self._client(), self._mod
        inp = mod.InferInput(self._in_name, list(x.shape), self._datatype)
        inp.set_data_from_numpy(x)
        out = mod.InferRequestedOutput(self._out_name)
        if self.scheme == "grpc":
            res = self._call("inference failed", lambda: client.infer(self.model, [inp], outputs=[out],
                                                                      client_timeout=self._network_timeout))
        else:
            res = self._call("inference failed", lambda: client.infer(self.model, [inp], outputs=[out]))
        y = res.as_numpy(self._out_name)
        want = (x.shape[0], 3, x.shape[2], x.shape[3])
        if y is None or tuple(y.shape) != want:
            raise ModelError(f"Triton model {self.model!r} returned {None if y is None else tuple(y.shape)}, not {want}")
        return y

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
