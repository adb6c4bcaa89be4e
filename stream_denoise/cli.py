"""Command line: parse, configure logging, call one library function, print one line on error."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from . import __version__
from .backends import NAMES as BACKEND_NAMES
from .errors import StreamDenoiseError
from .model_files import for_window

log = logging.getLogger("stream_denoise")



def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="shipped model name (lite, lite-causal, base) or a .pt/.onnx path; default: auto")
    p.add_argument("--backend", choices=BACKEND_NAMES, default=None, help="inference backend (default auto)")
    p.add_argument("--window", choices=["centered", "causal"], default=None, help="temporal window (default: the model's)")
    p.add_argument("--threads", type=int, default=None, help="CPU inference threads (default: all cores)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=None, help="backend precision")
    p.add_argument("--strength", type=float, default=None,
                   help="how hard to denoise, 0.25-4 (the measured noise level told to the network is multiplied by it; default 1)")
    p.add_argument("--lanes", type=int, default=None,
                   help="onnxruntime: frames denoised at once on one-thread sessions (default: one per thread; 1 = off)")
    p.add_argument("--triton-url", default=None, help="backend triton: the server (host:port, grpc://host:port)")


def _model_cfg(a: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    from .config import FLAT_KEYS

    m = dict(base or {})
    flags = vars(a)
    for key in ("model", "backend", "window", "threads", "precision", "strength"):
        if flags.get(key) is not None:
            m[key] = flags[key]
    for flag, (table, key) in FLAT_KEYS.items():  # --lanes, --triton-url: options of one backend
        if flags.get(flag) is not None:
            m.pop(flag, None)  # a file's old flat key gives way to the flag
            m[table] = {**(m.get(table) or {}), key: flags[flag]}
    if m.get("window") is not None:
        m["model"] = for_window(m.get("model", "auto"), m["window"])
    return m


def _rtsp_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rtsp-out", nargs="?", const="serve", metavar="URL",
                   help="also stream the cleaned video over RTSP (H.264): alone, serve rtsp://127.0.0.1:8554/NAME "
                        "(NAME: the source's name or 'stream'); with rtsp://HOST:PORT/PATH, push it to a media server")
    p.add_argument("--rtsp-listen", metavar="HOST:PORT", help="serve mode: where to listen (default 127.0.0.1:8554)")
    p.add_argument("--rtsp-codec", choices=["h264", "h265"], help="RTSP output codec (default h264)")
    p.add_argument("--rtsp-encoder", choices=["auto", "software", "nvenc"], help="RTSP output encoder (default auto)")
    p.add_argument("--rtsp-bitrate", type=int, metavar="KBPS", help="RTSP output bit rate instead of constant quality")
    p.add_argument("--rtsp-crf", type=int, help="RTSP output constant quality (default 18; lower is better)")


def _rtsp_overrides(a: argparse.Namespace, data: dict[str, Any]) -> None:
    """--rtsp-* flags onto the config's [rtsp_out] (created by --rtsp-out)."""
    from .errors import ConfigError

    flags = {"host_port": a.rtsp_listen, "codec": a.rtsp_codec, "encoder": a.rtsp_encoder,
             "bitrate_kbps": a.rtsp_bitrate, "crf": a.rtsp_crf}
    given = {k: v for k, v in flags.items() if v is not None}
    if a.rtsp_out is None and not given:
        return
    if a.rtsp_out is None and data.get("rtsp_out") is None:
        raise ConfigError("--rtsp-listen/--rtsp-codec/--rtsp-encoder/--rtsp-bitrate/--rtsp-crf need --rtsp-out "
                          "(or [rtsp_out] in the config)")
    out = dict(data.get("rtsp_out") or {})
    if a.rtsp_out == "serve":
        out.pop("url", None)
    elif a.rtsp_out is not None:
        out["url"] = a.rtsp_out
    if (listen := given.pop("host_port", None)) is not None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--rtsp-listen: expected HOST:PORT, got {listen!r}")
        out.update(host=host.strip("[]"), port=int(port))
    out.update(given)
    data["rtsp_out"] = out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stream-denoise", description="Real-time self-supervised video denoiser for live streams.")
    p.add_argument("--version", action="version", version=f"stream-denoise {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="denoise a live source and publish it over ZeroMQ")
    r.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    r.add_argument("--source", help="rtsp://..., a video file, or a camera (0, /dev/video0)")
    r.add_argument("--publish", help="ZeroMQ endpoint to bind (default tcp://127.0.0.1:5555)")
    r.add_argument("--no-publish", action="store_true", help="do not publish (record only)")
    r.add_argument("--encoding", choices=["raw", "jpeg", "png"], help="pixel encoding of published frames")
    r.add_argument("--wire", choices=["stream_denoise", "imagezmq"],
                   help="message format: stream_denoise (default) or imagezmq (read by imagezmq's ImageHub)")
    r.add_argument("--curve-key", type=Path, metavar="SECRET_KEY",
                   help="CURVE: encrypt and authenticate with this server secret key file (from `keygen`); needs --curve-clients")
    r.add_argument("--curve-clients", type=Path, metavar="DIR", help="CURVE: directory of the public key files of allowed subscribers")
    r.add_argument("--output", type=Path,
                   help="also record the cleaned stream to this file (.mkv lossless, .mp4/.mov H.264, .avi MJPEG)")
    r.add_argument("--record-input", type=Path, help="also record the noisy input (.mkv lossless), e.g. for fine-tune")
    r.add_argument("--loop", action="store_true", help="files: loop forever (demos)")
    r.add_argument("--realtime", action="store_true", help="files: read at the file's frame rate, like a camera")
    r.add_argument("--max-frames", type=int, help="stop after this many frames")
    r.add_argument("--status-interval", type=float, help="seconds between status lines (default 5)")
    r.add_argument("--metrics-port", type=int, help="serve /healthz and Prometheus /metrics on this port")
    r.add_argument("--metrics-host", help="address of the metrics server (default 127.0.0.1; 0.0.0.0 in containers)")
    r.add_argument("--adapt", action="store_true",
                   help="learn the camera while streaming: fine-tune in the background, swap in better models "
                        "(kept per camera under [adapt] dir, default adapted/)")
    _rtsp_args(r)
    _model_args(r)

    d = sub.add_parser("denoise", help="denoise a whole video file (same frames, same size)")
    d.add_argument("input", type=Path)
    d.add_argument("output", type=Path, help=".mkv is lossless (FFV1), .mp4/.mov H.264, .avi MJPEG; never the input")
    _model_args(d)

    s = sub.add_parser("subscribe", help="receive published frames and write them to a video file")
    s.add_argument("endpoint", help="the publisher: tcp://HOST:PORT or ipc:///path")
    s.add_argument("--out", type=Path, default=Path("received.mkv"),
                   help="video file to write (default received.mkv; .mkv lossless FFV1, .mp4/.mov H.264, .avi MJPEG), "
                        "finished on Ctrl-C, SIGTERM or SIGHUP; a new file OUT.1.mkv... when the frame size changes")
    s.add_argument("--count", type=int, default=None, help="stop after N frames (default: until Ctrl-C/SIGTERM)")
    s.add_argument("--timeout", type=float, default=10.0,
                   help="give up (exit 3, no file) when the first frame does not come within this many seconds (default 10)")
    s.add_argument("--idle-timeout", type=float, default=None,
                   help="once recording, stop (the file finished, exit 3) after this many seconds without a frame; "
                        "default: record through camera outages")
    s.add_argument("--topic", default="", help="topic prefix to subscribe to")
    s.add_argument("--fps", type=float, default=None,
                   help="write frames 1/FPS apart (default: the stream's own timing, from the frames' pts and capture times)")
    s.add_argument("--server-key", type=Path, help="CURVE: the server's public key file")
    s.add_argument("--client-key", type=Path, help="CURVE: this client's secret key file")

    f = sub.add_parser("fine-tune", help="fit the network to a camera from its noisy recordings (self-supervised)")
    f.add_argument("clips", nargs="+", type=Path, help="recorded noisy clips of the camera")
    f.add_argument("--out", type=Path, required=True, help="model file to write (must end in .pt)")
    f.add_argument("--from", dest="init", default=None, help="start from this model (default: the shipped one)")
    f.add_argument("--scratch", action="store_true", help="start from random weights instead")
    f.add_argument("--arch", default="lite", help="architecture when starting from scratch")
    f.add_argument("--window", choices=["centered", "causal"], default="centered")
    f.add_argument("--minutes", type=float, default=10.0)
    f.add_argument("--steps", type=int, default=3000)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--max-frames", type=int, default=300, help="frames read per clip")
    f.add_argument("--objective", choices=["temporal", "masked"], default="temporal",
                   help="temporal: aligned neighbouring frames as targets (every pixel learnt); masked: blind spot")
    f.add_argument("--precision", choices=["auto", "bfloat16", "float32"], default="auto",
                   help="training arithmetic; auto: bfloat16 autocast where the GPU or CPU (AMX, AVX512-BF16) runs it natively")

    e = sub.add_parser("export", help="export a model to ONNX (fp32 or fp16)")
    e.add_argument("model")
    e.add_argument("--out", type=Path, required=True, help="ONNX file to write (must end in .onnx)")
    e.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")

    k = sub.add_parser("keygen", help="make a CURVE key pair for the publisher or a subscriber")
    k.add_argument("directory", type=Path)
    k.add_argument("--name", default="server")

    c = sub.add_parser("check-config", help="validate a TOML config file")
    c.add_argument("config", type=Path)

    sub.add_parser("demo", help="denoise the bundled sample clip: publish it and write demo_output/")

    g = sub.add_parser("build-engine", help="build a TensorRT engine for this GPU (cached in engines/)")
    g.add_argument("model", help="shipped model name (lite, lite-causal, base) or a .pt/.onnx path")
    g.add_argument("--precision", choices=["fp16", "int8", "fp32"], default="fp16")
    g.add_argument("--shape", help="HxW: one size (opt; also min/max unless given)")
    g.add_argument("--min-shape", help="HxW (default 64x64)")
    g.add_argument("--opt-shape", help="HxW the engine is tuned for (default 720x1280)")
    g.add_argument("--max-shape", help="HxW (default 1080x1920)")
    g.add_argument("--batch", type=int, default=1)
    g.add_argument("--calibration", type=Path, help="calibration set .npz (int8)")
    g.add_argument("--out", type=Path, default=Path("engines"))
    g.add_argument("--workspace-mb", type=int, default=1024)

    t = sub.add_parser("export-triton", help="export a model as an NVIDIA Triton Inference Server model repository")
    t.add_argument("model", help="shipped model name (lite, lite-causal, base) or a .pt/.onnx path")
    t.add_argument("--out", type=Path, required=True, help="model repository directory (the model goes in OUT/NAME/)")
    t.add_argument("--platform", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                   help="onnxruntime: the ONNX model on CPU instances; tensorrt: a built engine (--engine) on GPU instances")
    t.add_argument("--precision", choices=["fp32", "fp16"], default=None,
                   help="onnxruntime: fp32 (default) or fp16 (needs the .pt and torch); tensorrt: the engine's")
    t.add_argument("--max-batch", type=int, default=16, help="max_batch_size: most windows Triton batches together (default 16)")
    t.add_argument("--instances", type=int, default=1, help="model instances (instance_group count, default 1)")
    t.add_argument("--engine", type=Path, help="tensorrt: the engine file from `stream-denoise build-engine`")
    t.add_argument("--name", help="Triton model name (default: the model's name)")

    q = sub.add_parser("calibrate", help="calibration set from a camera's recordings + an INT8 model made with it")
    q.add_argument("clips", nargs="+", type=Path, help="recorded noisy clips of the camera")
    q.add_argument("--model", default="lite", help="fp32 model: shipped name or .pt/.onnx path (default lite)")
    q.add_argument("--out", type=Path, default=Path("calibration"), help="directory for <clip>.npz and <model>-<clip>.int8.onnx")
    q.add_argument("--windows", type=int, default=256, help="calibration windows (default 256)")
    q.add_argument("--size", default=None, metavar="HxW", help="crop windows to HEIGHTxWIDTH, multiples of 4 (default: whole frames)")
    q.add_argument("--target", choices=["cpu", "tensorrt"], default="cpu", help="cpu: ONNX Runtime (uint8); tensorrt: symmetric int8 Q/DQ")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=None, help="CPU threads for the held-out check")

    b = sub.add_parser("bench", help="quality/speed benchmarks (source checkout only): bench [quality|speed|all] [--quick]")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of `python -m benchmarks`")
    return p


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _install_stop() -> threading.Event:
    """Ctrl-C, SIGTERM (systemd, docker stop, Kubernetes) and SIGHUP set the returned event: the
    command finishes its files and exits 0."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    return stop


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C's KeyboardInterrupt so that every command finishes its
    files the same way on each of them."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt_on_signals() -> None:
    """SIGTERM and SIGHUP interrupt the command as Ctrl-C does (once: a second one while it finishes
    its files is ignored); commands that poll a stop event replace this with :func:`_install_stop`."""
    raised: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        if raised:
            log.warning("signal %d: already stopping", signum)
            return
        raised.append(signum)
        raise Interrupted(signum)

    if threading.current_thread() is threading.main_thread():  # main() called from a thread: leave signals alone
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, handler)


def cmd_run(a: argparse.Namespace) -> int:
    from .config import DeploymentConfig, RunConfig
    from .config_file import check_config
    from .pipeline import Pipeline

    cfg = check_config(a.config, lambda data: _run_overrides(a, data))  # the config's one validation
    if isinstance(cfg, DeploymentConfig):
        return _run_deployment(a, cfg)
    assert isinstance(cfg, RunConfig)
    stop = _install_stop()
    with Pipeline(cfg) as pipeline:
        m = pipeline.run(stop)
    log.info("published %d frames", m.frames_out)
    return 0


def _run_overrides(a: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """The config file's data (``{}`` without one) with `run`'s flags applied."""
    from .errors import ConfigError

    if "cameras" in data:  # many cameras: only the flags that apply to all of them
        per_camera = {"--source": a.source, "--output": a.output, "--record-input": a.record_input,
                      "--loop": a.loop, "--realtime": a.realtime, "--no-publish": a.no_publish, "--adapt": a.adapt,
                      "--rtsp-out/--rtsp-*": a.rtsp_out or a.rtsp_listen or a.rtsp_codec or a.rtsp_encoder
                      or a.rtsp_bitrate or a.rtsp_crf}
        given = [flag for flag, value in per_camera.items() if value]
        if given:
            raise ConfigError(f"{', '.join(given)}: not with a multi-camera config ({a.config}); "
                              "set them per camera in its [[cameras]] tables")
        return _common_overrides(a, data)
    src = dict(data.get("source", {}))
    if a.source:
        src["uri"] = a.source
    if "uri" not in src:
        raise ConfigError("no source: give --source URI or a config file with [source] uri")
    if a.loop:
        src["loop"] = True
    if a.realtime:
        src["realtime"] = True
    data["source"] = src
    if a.no_publish:
        data["publish"] = None
    else:
        data["publish"] = dict(data.get("publish") or {})
    out = dict(data.get("output", {}))
    if a.output:
        out["path"] = str(a.output)
    if a.record_input:
        out["input_path"] = str(a.record_input)
    data["output"] = out
    _rtsp_overrides(a, data)
    if a.adapt:
        data["adapt"] = dict(data.get("adapt") or {})
    return _common_overrides(a, data)


def _common_overrides(a: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """Flags that override a config file the same way for one camera and for many."""
    if bool(a.curve_key) != bool(a.curve_clients):
        from .errors import ConfigError

        raise ConfigError("--curve-key and --curve-clients go together (the server's secret key, the allowed clients' keys)")
    if (a.publish or a.encoding or a.wire or a.curve_key) and data.get("publish", {}) is not None:
        pub = dict(data.get("publish") or {})
        if a.publish:
            pub["endpoint"] = a.publish
        if a.encoding:
            pub["encoding"] = a.encoding
        if a.wire:
            pub["wire"] = a.wire
        if a.curve_key:
            pub["curve"] = {"server_secret_key": str(a.curve_key), "allowed_clients_dir": str(a.curve_clients)}
        data["publish"] = pub
    data["model"] = _model_cfg(a, data.get("model"))
    if a.max_frames:
        data["max_frames"] = a.max_frames
    if a.status_interval:
        data["status_interval_s"] = a.status_interval
    if a.metrics_port is not None:
        data["metrics_port"] = a.metrics_port
    if a.metrics_host is not None:
        data["metrics_host"] = a.metrics_host
    return data


def _run_deployment(a: argparse.Namespace, cfg: Any) -> int:
    """`run --config FILE` where FILE has [[cameras]]: every camera in one process (multicam)."""
    from .multicam import MultiCamera

    if not (a.verbose or a.quiet):  # -v/-q win over the file's log_level
        logging.getLogger().setLevel(cfg.log_level.upper())
    stop = _install_stop()
    if cfg.ray is not None:  # cameras as Ray actors, inference as a Ray Serve deployment
        from .ray_serve import RayDeployment

        with RayDeployment(cfg) as dep:
            results = dep.run(stop)
        log.info("published %d frames from %d cameras on Ray",
                 sum(r.get("frames_out", 0) for r in results.values()), len(results))
        return 0
    with MultiCamera(cfg) as mc:
        metrics = mc.run(stop)
    log.info("published %d frames from %d cameras", sum(m.frames_out for m in metrics.values()), len(metrics))
    return 0


def cmd_denoise(a: argparse.Namespace) -> int:
    from .config import ModelConfig
    from .config_file import parse
    from .offline import denoise_file

    cfg = parse(ModelConfig, _model_cfg(a), origin="flags")
    n = denoise_file(a.input, a.output, cfg)
    log.info("wrote %d frames to %s", n, a.output)
    return 0


def cmd_subscribe(a: argparse.Namespace) -> int:
    from .subscribe import record

    res = record(a.endpoint, a.out, a.count, a.timeout, idle_timeout_s=a.idle_timeout, topics=a.topic, fps=a.fps,
                 curve_server_public_key=a.server_key, client_secret_key=a.client_key)
    log.info("wrote %d frames (%dx%d) to %s%s; received %d, gaps %d, missed %d, rejected %d", res.written, res.width,
             res.height, ", ".join(map(str, res.paths)) or res.path, " (interrupted)" if res.interrupted else "",
             res.received, res.gaps, res.missed, res.rejected)
    return 0


def _model_out(out: Path, suffix: str, inputs: list[tuple[str, Any]]) -> None:
    """A model file to write: its extension is one `run --model` takes, and it is none of the inputs."""
    from .errors import ConfigError
    from .files import check_outputs

    if out.suffix != suffix:
        raise ConfigError(f"--out {out}: the file must end in {suffix} (what `run --model` and `denoise --model` take)")
    check_outputs(inputs, [("--out", out)])


def cmd_fine_tune(a: argparse.Namespace) -> int:
    _model_out(a.out, ".pt", [*(("clip", c) for c in a.clips),
                              ("--from", a.init if a.init and Path(a.init).is_file() else None)])
    from .train.finetune import FineTune, fine_tune

    fine_tune(a.clips, a.out, FineTune(init=None if a.scratch else (a.init or for_window("lite", a.window)),
                                       arch=a.arch, window=a.window, minutes=a.minutes, steps=a.steps, seed=a.seed,
                                       max_frames=a.max_frames, objective=a.objective, precision=a.precision))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from . import model_files
    from .export.to_onnx import export_onnx

    model = model_files.resolve(a.model, ".pt")
    _model_out(a.out, ".onnx", [("model", model)])
    export_onnx(model, a.out, a.precision)
    return 0


def cmd_keygen(a: argparse.Namespace) -> int:
    from .sockets import keygen

    public, secret = keygen(a.directory, a.name)
    print(f"public key: {public}\nsecret key: {secret} (keep it private)")
    return 0


def cmd_check_config(a: argparse.Namespace) -> int:
    from .config import DeploymentConfig
    from .config_file import check_config

    cfg = check_config(a.config)  # every bad field with its line, on one error line
    kind = f"{len(cfg.cameras)} cameras" if isinstance(cfg, DeploymentConfig) else "one camera"
    print(f"{a.config}: ok ({kind})")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path("demo_output"), _install_stop())
    return 0


def cmd_build_engine(a: argparse.Namespace) -> int:
    from .backends.tensorrt_runtime import Shapes
    from .export.engine import build_engine

    shapes = Shapes.parse(a.shape, a.min_shape, a.opt_shape, a.max_shape, a.batch)
    print(build_engine(a.model, a.precision, shapes, a.out, a.calibration, a.workspace_mb))
    return 0


def cmd_export_triton(a: argparse.Namespace) -> int:
    from .export.triton_repository import export_repository

    print(export_repository(a.model, a.out, platform=a.platform, precision=a.precision, max_batch=a.max_batch,
                            instances=a.instances, engine=a.engine, name=a.name))
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from .export.calibrate import calibrate, parse_size

    npz, int8 = calibrate(a.clips, a.model, a.out, a.windows, parse_size(a.size) if a.size else None,
                          seed=a.seed, target=a.target, threads=a.threads)
    print(f"calibration set: {npz}\nINT8 model: {int8}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    try:
        from benchmarks.__main__ import main as bench_main
    except ImportError:
        from .errors import ConfigError

        raise ConfigError("the benchmarks live in the source checkout: run from the repository root") from None
    return bench_main(a.rest)


COMMANDS = {"bench": cmd_bench, "calibrate": cmd_calibrate, "build-engine": cmd_build_engine, "export-triton": cmd_export_triton, "run": cmd_run, "denoise": cmd_denoise, "subscribe": cmd_subscribe, "fine-tune": cmd_fine_tune,
            "export": cmd_export, "keygen": cmd_keygen, "check-config": cmd_check_config, "demo": cmd_demo}


# optional packages -> the extra that installs them, for a one-line error instead of a traceback
EXTRAS = {"torch": "torch", "onnxscript": "torch", "tensorrt": "trt", "tritonclient": "triton", "ray": "ray",
          "skvideo": "train", "skimage": "train", "tqdm": "train", "bm4d": "bench", "matplotlib": "bench"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    _interrupt_on_signals()
    try:
        return COMMANDS[args.command](args)
    except StreamDenoiseError as exc:
        print(f"stream-denoise: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        if package not in EXTRAS:
            raise
        print(f"stream-denoise: error: {args.command} needs {package}, which is not installed: "
              f"pip install 'stream_denoise[{EXTRAS[package]}]'", file=sys.stderr)
        return 5
    except KeyboardInterrupt as exc:
        print("stream-denoise: interrupted", file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Interrupted) else 130


if __name__ == "__main__":
    sys.exit(main())
