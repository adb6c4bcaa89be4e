"""One TOML file for one camera (RunConfig) or many (DeploymentConfig): every bad field is reported
with its line, values must have their TOML type, and the shipped example validates."""

from pathlib import Path
from textwrap import dedent

import pytest

from stream_denoise.config import CameraConfig, DeploymentConfig, ModelConfig, RunConfig
from stream_denoise.config_file import ConfigProblems, check_config, parse
from stream_denoise.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "docker" / "camera.toml"

GOOD = """\
log_level = "info"
metrics_port = 9100

[model]
model = "lite"
backend = "onnxruntime"

[publish]
endpoint = "tcp://*:5555"

[[cameras]]
name = "gate"
source = "rtsp://127.0.0.1:8554/gate"

[[cameras]]
name = "yard"
topic = "yard-cam"
[cameras.source]
uri = "rtsp://127.0.0.1:8554/yard"
read_timeout_s = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deployment.toml"
    path.write_text(dedent(text))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigProblems) as info:
        check_config(path)
    assert isinstance(info.value, ConfigError)  # the CLI's one-line error path handles it
    return info.value.problems


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing ``needle``."""
    hits = [i for i, line in enumerate(dedent(text).splitlines(), start=1) if needle in line]
    return hits[nth - 1]


def test_good_file_is_a_deployment(tmp_path):
    cfg = check_config(write(tmp_path, GOOD))
    assert isinstance(cfg, DeploymentConfig)
    assert [c.name for c in cfg.cameras] == ["gate", "yard"]
    assert [c.effective_topic for c in cfg.cameras] == ["gate", "yard-cam"]
    assert cfg.cameras[0].source.uri == "rtsp://127.0.0.1:8554/gate"  # string shorthand for [source] uri
    src = cfg.cameras[1].source_config()
    assert (src.name, src.read_timeout_s) == ("yard", 2.0)


def test_example_config_validates():
    cfg = check_config(EXAMPLE)
    assert isinstance(cfg, DeploymentConfig)
    assert len(cfg.cameras) >= 2
    assert cfg.publish.endpoint == "tcp://*:5555"
    assert cfg.metrics_port == 9100
    assert cfg.cameras[0].source.uri.startswith("rtsp://rtsp-source:8554/")  # the compose test source


# (snippet replacing a line of GOOD or appended, the text marking the reported line, key, words of the message)
BAD = {
    "unknown top-level key": ('log_level = "info"', 'log_lvl = "info"', 'log_lvl', "log_lvl", "Extra inputs"),
    "unknown key in a camera's source": ("read_timeout_s = 2", "read_timeout = 2", "read_timeout =",
                                         "cameras[1].source.read_timeout", "Extra inputs"),
    "string for a number": ("read_timeout_s = 2", 'read_timeout_s = "2"', "read_timeout_s",
                            "cameras[1].source.read_timeout_s", "valid number"),
    "string for an integer": ("metrics_port = 9100", 'metrics_port = "9100"', "metrics_port", "metrics_port",
                              "valid integer"),
    "string for a boolean": ("read_timeout_s = 2", 'loop = "yes"', "loop", "cameras[1].source.loop", "valid boolean"),
    "out of range": ("metrics_port = 9100", "metrics_port = 70000", "metrics_port", "metrics_port", "less than"),
    "out of range in a camera": ('topic = "yard-cam"', "max_fps = -5", "max_fps", "cameras[1].max_fps", "greater than"),
    "unknown backend": ('backend = "onnxruntime"', 'backend = "openvino"', "backend", "model.backend", "'onnxruntime'"),
    "bad endpoint": ('endpoint = "tcp://*:5555"', 'endpoint = "udp://camera:5555"', "endpoint", "publish.endpoint",
                     "tcp://HOST:PORT"),
    "shared topic in a deployment": ('endpoint = "tcp://*:5555"', 'topic = "all"', 'topic = "all"', "publish.topic",
                                     "per camera"),
    "duplicate camera names": ('topic = "yard-cam"', 'name = "gate"', 'name = "gate"',
                               "cameras[1].name", "already used by cameras[0]"),
    "duplicate topics": ('topic = "yard-cam"', 'topic = "gate"', 'topic = "gate"', "cameras[1].topic", "gate"),
    "topics that overlap as prefixes": ('topic = "yard-cam"', 'topic = "gate-2"', 'topic = "gate-2"',
                                        "cameras[1].topic", "prefix"),
    "camera name with a space": ('name = "gate"', 'name = "front gate"', "front gate", "cameras[0].name", "pattern"),
    "camera endpoint without [ray]": ('topic = "yard-cam"', 'endpoint = "tcp://*:6000"', "*:6000",
                                      "cameras[1].endpoint", "needs a [ray] deployment"),
    "bad ray replicas": ('endpoint = "tcp://*:5555"', 'endpoint = "tcp://*:5555"\n[ray]\nreplicas = 0',
                         "replicas", "ray.replicas", "greater than or equal to 1"),
    "unknown ray key": ('endpoint = "tcp://*:5555"', 'endpoint = "tcp://*:5555"\n[ray]\nadress = "auto"',
                        "adress", "ray.adress", "Extra inputs"),
    "ring slot too small": ('endpoint = "tcp://*:5555"', 'endpoint = "tcp://*:5555"\n[runtime]\nmax_frame = [8, 8]',
                            "max_frame", "runtime.max_frame", "each 16..8192"),
    "negative decode workers": ('endpoint = "tcp://*:5555"', 'endpoint = "tcp://*:5555"\n[runtime]\ndecode_workers = -1',
                                "decode_workers", "runtime.decode_workers", "greater than or equal to 0"),
    "fps cap given twice": ("read_timeout_s = 2", "max_fps = 10", "max_fps = 10", "cameras[1].source.max_fps",
                            "set the cap once"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_field_is_reported_with_its_line(tmp_path, case):
    old, new, marker, key, words = BAD[case]
    text = GOOD.replace(old, new, 1)
    if case == "fps cap given twice":  # the camera's own cap and its source's differ
        text = GOOD.replace('topic = "yard-cam"', 'topic = "yard-cam"\nmax_fps = 5').replace(old, old + "\n" + new)
    if case == "duplicate camera names":
        text = GOOD.replace('name = "yard"', 'name = "gate"')
        marker = 'name = "gate"'
    assert text != GOOD
    path = write(tmp_path, text)
    found = problems(path)
    assert len(found) == 1, found
    nth = 2 if case == "duplicate camera names" else 1
    expected_line = line_of(text, marker, nth)
    assert found[0].startswith(f"{path}:{expected_line}: {key}"), (found[0], expected_line)
    assert words in found[0]


def test_every_bad_field_of_a_file_is_reported(tmp_path):
    text = """\
    log_level = "loud"
    metrics_port = "9100"
    colour = "red"

    [model]
    threads = 0

    [publish]
    endpoint = "nowhere"

    [[cameras]]
    name = "gate"
    source = "rtsp://127.0.0.1:8554/gate"

    [[cameras]]
    name = "yard"
    [cameras.source]
    uri = "yard.mp4"
    read_timeout_s = -1
    hwaccel = "maybe"
    """
    path = write(tmp_path, text)
    found = problems(path)
    got = {p.split(": ")[1]: int(p.split(":")[1]) for p in found}
    assert got == {
        "log_level": 1, "metrics_port": 2, "colour": 3, "model.threads": 6, "publish.endpoint": 9,
        "cameras[1].source.read_timeout_s": 19, "cameras[1].source.hwaccel": 20,
    }, found
    assert [int(p.split(":")[1]) for p in found] == sorted(got.values())  # in file order


def test_missing_and_empty(tmp_path):
    found = problems(write(tmp_path, "cameras = []\n"))
    assert found[0].startswith(f"{tmp_path / 'deployment.toml'}:1: cameras:") and "at least 1" in found[0]
    found = problems(write(tmp_path, '[[cameras]]\nname = "a"\n[cameras.source]\nloop = true\n'))
    assert found == [f"{tmp_path / 'deployment.toml'}:3: cameras[0].source.uri: Field required"]


def test_inline_tables_and_dotted_keys_are_located(tmp_path):
    text = """\
    [[cameras]]
    name = "a"
    source = { uri = "a.mp4", loop = "no" }
    model.threads = 0
    """
    found = problems(write(tmp_path, text))
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in found] == ["3", "4"], found


def test_single_camera_file_is_a_run_config(tmp_path):
    path = tmp_path / "camera.toml"
    path.write_text('[source]\nuri = "rtsp://127.0.0.1:8554/stream"\n\n[publish]\nencoding = "raw"\n')
    assert isinstance(check_config(path), RunConfig)
    path.write_text('[source]\nuri = "rtsp://x"\nread_timeout_s = "5"\n\n[publish]\nsndhwm = 0\nsnd_hwm = 3\n')
    found = problems(path)
    assert [p.split(": ")[1] for p in found] == ["source.read_timeout_s", "publish.sndhwm", "publish.snd_hwm"]
    assert [int(p.split(":")[1]) for p in found] == [3, 6, 7]


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        check_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[cameras]\nname = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        check_config(bad)


def test_camera_model_override_and_window():
    base = ModelConfig(model="lite", backend="onnxruntime", threads=2, precision="fp16")
    own = CameraConfig(name="yard", source="yard.mp4", model={"model": "yard.pt"})
    m = own.model_config_for(base)
    assert (m.model, m.backend, m.threads, m.precision) == ("yard.pt", "onnxruntime", 2, "fp16")  # only given keys replaced
    causal = CameraConfig(name="door", source="door.mp4", window="causal").model_config_for(base)
    assert (causal.model, causal.window) == ("lite-causal", "causal")
    assert CameraConfig(name="x", source="x.mp4").model_config_for(base) == base


def test_strength_per_camera_shares_the_backend():
    """[cameras.model] strength: that camera's noise reading is scaled; the network (its backend) is shared."""
    from stream_denoise.multicam import _model_key

    base = ModelConfig(model="lite", backend="onnxruntime")
    night = CameraConfig(name="yard", source="yard.mp4", model={"strength": 1.3}).model_config_for(base)
    assert (night.model, night.strength, base.strength) == ("lite", 1.3, 1.0)
    assert _model_key(night) == _model_key(base)
    for bad in (0.0, 0.1, 5):
        with pytest.raises(ConfigError, match="strength"):
            parse(DeploymentConfig, {"cameras": [{"name": "a", "source": "a.mp4"}], "model": {"strength": bad}})


def test_each_backend_has_its_own_table_and_old_flat_keys_still_load(tmp_path):
    """[model.onnxruntime] / [model.tensorrt] / [model.triton]; a file from before the tables (lanes,
    engines_dir, triton_url in [model]) loads to the same config; giving both is one clear problem."""
    nested = ('[source]\nuri = "x.mp4"\n\n[model]\nmodel = "lite"\n\n[model.onnxruntime]\nlanes = 2\n\n'
              '[model.tensorrt]\nengines_dir = "/engines"\n\n[model.triton]\nurl = "triton:8001"\n')
    flat = ('[source]\nuri = "x.mp4"\n\n[model]\nmodel = "lite"\nlanes = 2\nengines_dir = "/engines"\n'
            'triton_url = "triton:8001"\n')
    a, b = check_config(write(tmp_path, nested)), check_config(write(tmp_path, flat))
    assert isinstance(a, RunConfig) and a.model == b.model
    assert (a.model.onnxruntime.lanes, str(a.model.tensorrt.engines_dir), a.model.triton.url) == (2, "/engines", "triton:8001")
    both = nested.replace('model = "lite"\n', 'model = "lite"\nlanes = 3\n')
    (found,) = problems(write(tmp_path, both))
    assert "lanes and [model.onnxruntime] lanes both given" in found
    bad = nested.replace("lanes = 2", "lanes = 0")
    (found,) = problems(write(tmp_path, bad))
    assert f":{line_of(bad, 'lanes = 0')}: model.onnxruntime.lanes" in found
    with pytest.raises(ConfigError, match="onnxruntime.threads"):  # a table takes only its backend's options
        check_config(write(tmp_path, nested.replace("lanes = 2", "threads = 2")))


def test_ray_deployment_endpoints(tmp_path):
    """On Ray each camera publishes from its own host: its endpoint, or the deployment's port + index."""
    text = GOOD + '\n[[cameras]]\nname = "dock"\nsource = "rtsp://127.0.0.1:8554/dock"\nendpoint = "tcp://*:7000"\n' \
        '\n[ray]\naddress = "ray://head:10001"\nreplicas = 4\n'
    cfg = check_config(write(tmp_path, text))
    assert isinstance(cfg, DeploymentConfig) and cfg.ray is not None and cfg.ray.replicas == 4
    assert [cfg.camera_endpoint(i) for i in range(3)] == ["tcp://*:5555", "tcp://*:5556", "tcp://*:7000"]
    clash = text.replace('endpoint = "tcp://*:7000"', 'endpoint = "tcp://*:5556"')
    (found,) = problems(write(tmp_path, clash))
    line = line_of(clash, 'endpoint = "tcp://*:5556"')
    assert f":{line}: cameras[2].endpoint" in found
    assert "also used by cameras[1]" in found
