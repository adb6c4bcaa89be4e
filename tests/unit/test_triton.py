"""Triton Inference Server: the model-repository export and the client backend, without a Triton server.

What runs here: the repository layout, config.pbtxt parsed back with Triton's own ModelConfig protobuf
(from tritonclient) and checked against the ONNX, the exported model.onnx in ONNX Runtime with batch 3,
the tensorrt platform's checks against an engine manifest (the engine bytes are a stand-in: nothing
here deserialises them), and TritonBackend over the real tritonclient HTTP client against a small
local stand-in for Triton's HTTP/REST (KServe v2) endpoints that runs the exported ONNX in ONNX Runtime.
What does not: a real tritonserver loading the repository (needs Docker, and a GPU for tensorrt_plan).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream_denoise.backends.onnx_cpu import OnnxRuntimeBackend
from stream_denoise.export.triton_repository import export_repository, model_name
from stream_denoise.errors import (
    BackendUnavailable,
    ConfigError,
    EngineError,
    ModelError,
)
from stream_denoise.model_files import MODELS_DIR
from stream_denoise.planes import Layout
from tests.cli_helpers import run_cli

onnx = pytest.importorskip("onnx")

SAMPLE = Path(__file__).parents[2] / "stream_denoise" / "data" / "sample_noisy.mp4"
LITE = MODELS_DIR / "lite.onnx"
HAVE_CLIENT = importlib.util.find_spec("tritonclient") is not None


def _model_config_pb2() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    return model_config_pb2


def parse_config(text: str) -> dict[str, Any]:
    """config.pbtxt as the JSON dict Triton serves at /v2/models/NAME/config: parsed with Triton's own
    ModelConfig protobuf (unknown or misspelt fields are errors); without it, a strict check of the
    top-level keys and the scalar fields."""
    pb2 = _model_config_pb2()
    if pb2 is not None:
        from google.protobuf import json_format, text_format

        return json_format.MessageToDict(text_format.Parse(text, pb2.ModelConfig()), preserving_proto_field_name=True)
    top = re.findall(r"^(\w+)", text, flags=re.MULTILINE)
    assert set(top) == {"name", "platform", "max_batch_size", "input", "output", "dynamic_batching",
                        "instance_group", "parameters"}
    params = dict(re.findall(r'key: "(\w+)"\s*value: \{ string_value: "([^"]*)" \}', text))
    tensors = re.findall(r'name: "(\w+)"\s*data_type: (TYPE_\w+)\s*dims: \[ ([-\d, ]+) \]', text)
    return {"name": re.search(r'^name: "(.*)"', text, re.MULTILINE).group(1),
            "platform": re.search(r'^platform: "(.*)"', text, re.MULTILINE).group(1),
            "max_batch_size": int(re.search(r"^max_batch_size: (\d+)", text, re.MULTILINE).group(1)),
            "input": [{"name": tensors[0][0], "data_type": tensors[0][1], "dims": tensors[0][2].split(", ")}],
            "output": [{"name": tensors[1][0], "data_type": tensors[1][1], "dims": tensors[1][2].split(", ")}],
            "instance_group": [{"kind": re.search(r"kind: (KIND_\w+)", text).group(1)}],
            "parameters": {k: {"string_value": v} for k, v in params.items()}}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_repository("lite", tmp_path_factory.mktemp("repo"), platform="onnxruntime", max_batch=8)


def test_repository_layout(repo: Path) -> None:
    assert repo.name == "lite"
    files = sorted(str(p.relative_to(repo.parent)) for p in repo.parent.rglob("*") if p.is_file())
    assert files == ["lite/1/model.onnx", "lite/config.pbtxt"]  # no temporary files left behind
    assert (repo / "1" / "model.onnx").read_bytes() == LITE.read_bytes()


def test_config_matches_the_onnx(repo: Path) -> None:
    cfg = parse_config((repo / "config.pbtxt").read_text())
    graph = onnx.load(str(repo / "1" / "model.onnx")).graph
    (inp,), (out,) = graph.input, graph.output
    meta = {p.key: p.value for p in onnx.load(str(LITE)).metadata_props}
    assert cfg["name"] == "lite" and cfg["platform"] == "onnxruntime_onnx"
    assert int(cfg["max_batch_size"]) == 8
    assert inp.type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis, as max_batch_size > 0 needs
    assert cfg["input"][0]["name"] == inp.name == "frames" and cfg["output"][0]["name"] == out.name == "clean"
    assert cfg["input"][0]["data_type"] == cfg["output"][0]["data_type"] == "TYPE_FP32"
    assert [int(d) for d in cfg["input"][0]["dims"]] == [Layout.from_meta(meta).channels, -1, -1]
    assert [int(d) for d in cfg["output"][0]["dims"]] == [3, -1, -1]
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"
    params = {k: v["string_value"] for k, v in cfg["parameters"].items()}
    assert params.items() >= {k: meta[k] for k in ("frames", "target", "stride", "window")}.items()
    if "dynamic_batching" in cfg:  # parsed with ModelConfig
        assert cfg["dynamic_batching"]["preferred_batch_size"] == [2, 4, 8]
        assert int(cfg["dynamic_batching"]["max_queue_delay_microseconds"]) > 0


def test_exported_onnx_runs_batched_like_the_shipped_model(repo: Path) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(repo / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    ref = OnnxRuntimeBackend(LITE, threads=1)
    x = np.random.default_rng(0).random((3, Layout.of(ref).channels, 32, 48), dtype=np.float32)
    (y,) = sess.run(["clean"], {"frames": x})
    expected = np.concatenate([ref.infer(x[i : i + 1]).copy() for i in range(3)])
    ref.close()
    assert y.shape == (3, 3, 32, 48)
    assert np.abs(y - expected).max() <= 1e-5


def test_tensorrt_needs_an_engine(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"stream-denoise build-engine.*--engine"):
        export_repository("lite", tmp_path, platform="tensorrt")
    assert not (tmp_path / "lite").exists()
    res = run_cli("-q", "export-triton", "lite", "--out", str(tmp_path), "--platform", "tensorrt", timeout=60)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode != 0 and len(lines) == 1 and "build-engine" in lines[0], res.stderr


def _fake_engine(tmp_path: Path, batch: int, io: str) -> Path:
    """Stand-in engine bytes with a manifest like export.engine writes (engines/README.md)."""
    engine = tmp_path / "lite-fp16-0123456789ab.engine"
    engine.write_bytes(b"plan bytes")
    manifest = {"name": "lite", "precision": "fp16", "onnx_precision": "fp16",
                "profile": {"input": "frames", "min": [1, 15, 64, 64], "opt": [batch, 15, 720, 1280],
                            "max": [batch, 15, 1080, 1920]},
                "model": {"frames": 5, "target": 2, "stride": 4, "window": "centered"},
                "precision_check": {"io": {"frames": io, "clean": io}}}
    engine.with_suffix(".json").write_text(json.dumps(manifest))
    return engine


def test_tensorrt_repository_from_an_engine(tmp_path: Path) -> None:
    engine = _fake_engine(tmp_path, batch=8, io="HALF")
    with pytest.raises(EngineError, match=r"batches up to 8.*--batch 16"):
        export_repository("lite", tmp_path / "repo", platform="tensorrt", engine=engine, max_batch=16)
    with pytest.raises(ConfigError, match="fp16"):
        export_repository("lite", tmp_path / "repo", platform="tensorrt", engine=engine, max_batch=8, precision="fp32")
    out = export_repository("lite", tmp_path / "repo", platform="tensorrt", engine=engine, max_batch=8, instances=2)
    assert (out / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert not (out / "1" / "model.onnx").exists()
    cfg = parse_config((out / "config.pbtxt").read_text())
    assert cfg["platform"] == "tensorrt_plan" and cfg["instance_group"][0]["kind"] == "KIND_GPU"
    assert cfg["input"][0]["data_type"] == cfg["output"][0]["data_type"] == "TYPE_FP16"
    assert cfg["parameters"]["precision"]["string_value"] == "fp16"
    assert cfg["parameters"]["frames"]["string_value"] == "5"


def test_fixed_batch_onnx_is_refused(tmp_path: Path) -> None:
    proto = onnx.load(str(LITE))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "fixed.onnx"
    onnx.save(proto, str(fixed))
    with pytest.raises(ModelError, match="dynamic"):
        export_repository(str(fixed), tmp_path / "repo")
    assert model_name(str(fixed)) == "fixed"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max batch"):
        export_repository("lite", tmp_path, max_batch=0)
    with pytest.raises(ConfigError, match="model name"):
        export_repository("lite", tmp_path, name="../x")
    with pytest.raises(ConfigError, match="--engine"):
        export_repository("lite", tmp_path, engine=tmp_path / "x.engine")


# ----------------------------------------------------------------------------------------------------
# The client backend
# ----------------------------------------------------------------------------------------------------

def test_parse_url() -> None:
    from stream_denoise.backends.triton_client import parse_url

    assert parse_url("localhost:8000") == ("http", "localhost:8000")
    assert parse_url("http://10.0.0.5") == ("http", "10.0.0.5:8000")
    assert parse_url("grpc://triton") == ("grpc", "triton:8001")
    assert parse_url("https://triton.example:8443/") == ("https", "triton.example:8443")
    with pytest.raises(ConfigError):
        parse_url("ftp://x:1")


def test_missing_client_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from stream_denoise.backends.triton_client import TritonBackend

    monkeypatch.setitem(sys.modules, "tritonclient.http", None)  # import fails as if not installed
    with pytest.raises(BackendUnavailable, match=re.escape('pip install "tritonclient[http]"')):
        TritonBackend("127.0.0.1:1", "lite")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_unreachable_server_fails_fast(tmp_path: Path) -> None:
    port = _closed_port()
    cfg = tmp_path / "cam.toml"
    cfg.write_text(f'[source]\nuri = "{SAMPLE}"\n\n[model]\nmodel = "lite"\ntriton_url = "127.0.0.1:{port}"\n')
    t0 = time.monotonic()
    res = run_cli("-q", "run", "--config", str(cfg), "--backend", "triton", "--no-publish",
                  "--output", str(tmp_path / "o.mkv"), timeout=60)
    assert time.monotonic() - t0 < 30
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode != 0 and "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    assert lines[0].startswith("stream-denoise: error:")
    if HAVE_CLIENT:
        assert f"127.0.0.1:{port}" in lines[0] and "cannot reach" in lines[0]
    else:
        assert 'pip install "tritonclient[http]"' in lines[0]


class _Model:
    """What the stand-in server serves: one exported model, run in ONNX Runtime, rejecting batches over
    max_batch_size as Triton does; ``batches`` records the batch size of each request."""

    def __init__(self, repo: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.name = repo.name
        self.config_text = (repo / "config.pbtxt").read_text()
        self.config = parse_config(self.config_text)
        self.session = ort.InferenceSession(str(repo / "1" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.batches: list[int] = []

    def run(self, name: str, shape: list[int], raw: bytes) -> np.ndarray | None:
        if shape[0] > int(self.config["max_batch_size"]):
            return None
        self.batches.append(shape[0])
        (y,) = self.session.run(None, {name: np.frombuffer(raw, np.float32).reshape(shape)})
        return y


class _HttpHandler(BaseHTTPRequestHandler):
    """The KServe v2 HTTP/REST endpoints TritonBackend uses (binary tensor extension)."""

    protocol_version = "HTTP/1.1"
    model: _Model

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        base = f"/v2/models/{self.model.name}"
        if self.path in ("/v2/health/live", f"{base}/ready"):
            self._send(200)
        elif self.path == f"{base}/config":
            self._send(200, json.dumps(self.model.config).encode(), {"Content-Type": "application/json"})
        else:
            self._send(404, json.dumps({"error": f"unknown path {self.path}"}).encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        n = int(self.headers["Inference-Header-Content-Length"])
        request = json.loads(body[:n])
        (inp,) = request["inputs"]
        y = self.model.run(inp["name"], inp["shape"], body[n:])
        if y is None:
            self._send(400, json.dumps({"error": "batch too large"}).encode())
            return
        header = json.dumps({"model_name": self.model.name, "outputs": [
            {"name": request["outputs"][0]["name"], "datatype": "FP32", "shape": list(y.shape),
             "parameters": {"binary_data_size": y.nbytes}}]}).encode()
        self._send(200, header + y.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                               "Content-Type": "application/octet-stream"})


@contextlib.contextmanager
def _http_server(model: _Model) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_HttpHandler,), {"model": model}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def _grpc_server(model: _Model) -> Iterator[str]:
    """The same endpoints over Triton's gRPC service (tritonclient's own service definition)."""
    from concurrent import futures

    grpc = pytest.importorskip("grpc")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerLiveResponse(live=True)

        def ModelReady(self, request: Any, context: Any) -> Any:
            return service_pb2.ModelReadyResponse(ready=request.name == model.name)

        def ModelConfig(self, request: Any, context: Any) -> Any:
            config = text_format.Parse(model.config_text, model_config_pb2.ModelConfig())
            return service_pb2.ModelConfigResponse(config=config)

        def ModelInfer(self, request: Any, context: Any) -> Any:
            (inp,), (out,) = request.inputs, request.outputs
            y = model.run(inp.name, list(inp.shape), request.raw_input_contents[0])
            if y is None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "batch too large")
            return service_pb2.ModelInferResponse(
                model_name=model.name, raw_output_contents=[y.tobytes()],
                outputs=[service_pb2.ModelInferResponse.InferOutputTensor(name=out.name, datatype="FP32", shape=y.shape)])

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture(params=["http", "grpc"])
def fake_triton(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    if not HAVE_CLIENT:
        pytest.skip('needs tritonclient: pip install "tritonclient[http]"')
    if request.param == "grpc" and _model_config_pb2() is None:
        pytest.skip("needs tritonclient's gRPC client (grpcio)")
    model = _Model(export_repository("lite", tmp_path, max_batch=2))
    with (_http_server if request.param == "http" else _grpc_server)(model) as url:
        yield url, model.batches


def test_backend_against_a_stand_in_server(fake_triton: tuple[str, list[int]]) -> None:
    from stream_denoise.backends import create_backend
    from stream_denoise.config import ModelConfig

    url, batches = fake_triton
    backend = create_backend(ModelConfig(model="lite", backend="triton", triton_url=url))
    try:
        assert (backend.name, backend.frames, backend.target, backend.stride) == ("triton", 5, 2, 4)
        x = np.random.default_rng(1).random((3, Layout.of(backend).channels, 32, 48), dtype=np.float32)
        y = backend.infer(x)
        assert batches == [2, 1]  # split at the model's max_batch_size
        ref = OnnxRuntimeBackend(LITE, threads=1)
        expected = np.concatenate([ref.infer(x[i : i + 1]).copy() for i in range(3)])
        ref.close()
        assert y.dtype == np.float32 and y.shape == (3, 3, 32, 48)
        assert np.abs(y - expected).max() <= 1e-5
        out: list[np.ndarray] = []  # another thread (the batching thread of multicam) gets its own client
        worker = threading.Thread(target=lambda: out.append(backend.infer(x[:1])))
        worker.start()
        worker.join(timeout=30)
        assert out and np.abs(out[0] - expected[:1]).max() <= 1e-5
    finally:
        backend.close()


def test_backend_unknown_model(fake_triton: tuple[str, list[int]]) -> None:
    from stream_denoise.backends.triton_client import TritonBackend

    url, _ = fake_triton
    with pytest.raises(BackendUnavailable, match="no model 'base' ready.*export-triton"):
        TritonBackend(url, "base")
