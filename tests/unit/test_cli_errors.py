"""Bad input at the edges: one clear line on stderr, a non-zero exit code, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

from tests.cli_helpers import assert_one_line_error, run_cli

import pytest

SAMPLE = Path(__file__).parents[2] / "stream_denoise" / "data" / "sample_noisy.mp4"


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli("-q", *args, timeout=60)


def test_unknown_scheme(tmp_path):
    assert_one_line_error(cli("run", "--source", "foo://camera", "--no-publish", "--output", str(tmp_path / "o.mkv")),
                          "foo://camera", "rtsp://")


def test_missing_file():
    assert_one_line_error(cli("run", "--source", "/nonexistent/clip.mp4"), "no such file")


def test_values_the_library_refuses_are_one_line_too(tmp_path):
    """Refusals raised below the CLI (not argparse's) are ConfigErrors, never a raw ValueError."""
    res = cli("subscribe", "tcp://127.0.0.1:1", "--count", "0", "--out", str(tmp_path / "r.mkv"))
    assert_one_line_error(res, "--count 0")
    assert res.returncode == 2
    pytest.importorskip("torch")
    from stream_denoise.errors import ConfigError
    from stream_denoise.model import create_model

    with pytest.raises(ConfigError, match="unknown architecture 'nope'"):  # fine-tune --scratch --arch nope
        create_model("nope")


def test_missing_model(tmp_path):
    assert_one_line_error(cli("denoise", str(SAMPLE), str(tmp_path / "o.mkv"), "--model", "nope"), "nope")


def test_malformed_model_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    assert_one_line_error(cli("denoise", str(SAMPLE), str(tmp_path / "o.mkv"), "--model", str(bad)), "bad.onnx")
    pt = tmp_path / "bad.pt"
    pt.write_bytes(b"\x80\x04garbage")
    assert_one_line_error(cli("export", str(pt), "--out", str(tmp_path / "x.onnx")), "bad.pt")


def test_foreign_onnx_model(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g), str(path))
    assert_one_line_error(cli("denoise", str(SAMPLE), str(tmp_path / "o.mkv"), "--model", str(path)), "not a stream_denoise")


def test_bad_config_file_points_at_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[source]\nuri = "x.mp4"\n\n[publish]\nendpoint = "tcp://127.0.0.1:5555"\nsndhwm = -3\n')
    res = cli("check-config", str(cfg))
    assert_one_line_error(res, "bad.toml:6", "sndhwm")
    cfg.write_text('[source]\nuri = "x.mp4"\nbogus = 1\n')
    assert_one_line_error(cli("check-config", str(cfg)), "bad.toml:3", "bogus")
    cfg.write_text("[source\n")
    assert_one_line_error(cli("check-config", str(cfg)), "not valid TOML")


def test_gpu_backends_fail_fast_without_gpu(tmp_path):
    for backend in ("tensorrt", "cuda"):
        res = cli("denoise", str(SAMPLE), str(tmp_path / "o.mkv"), "--backend", backend)
        if res.returncode == 0:
            pytest.skip("a GPU backend is available here")
        assert_one_line_error(res)


def test_causal_window_with_centered_model(tmp_path):
    assert_one_line_error(cli("denoise", str(SAMPLE), str(tmp_path / "o.mkv"), "--model", "base", "--window", "causal"),
                          "causal")


def test_version_and_help():
    assert subprocess.run([sys.executable, "-m", "stream_denoise", "--version"], capture_output=True, text=True).stdout.startswith("stream-denoise ")
    for cmd in ("run", "denoise", "subscribe", "fine-tune", "export", "keygen", "check-config", "demo"):
        res = subprocess.run([sys.executable, "-m", "stream_denoise", cmd, "--help"], capture_output=True, text=True)
        assert res.returncode == 0 and "usage:" in res.stdout


def test_import_is_light():
    code = ("import sys, stream_denoise, stream_denoise.config, stream_denoise.pipeline, stream_denoise.cli; "
            "heavy = [m for m in ('torch', 'tensorrt', 'onnx', 'av', 'zmq', 'cv2') if m in sys.modules]; "
            "print(heavy); assert not heavy")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


MODELS = Path(__file__).parents[2] / "stream_denoise" / "models"
WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; from stream_denoise.cli import main; sys.exit(main(sys.argv[1:]))"


def test_pt_models_without_torch_are_one_line(tmp_path):
    """The default install has no torch: a .pt model (the shipped base.pt, any fine-tune output) says
    what to install instead of ModuleNotFoundError."""
    env = {**os.environ, "STREAM_DENOISE_CACHE": str(tmp_path / "cache")}  # nothing exported yet

    def without_torch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "-q", *args], capture_output=True, text=True,
                              env=env, timeout=120)

    assert_one_line_error(without_torch("denoise", str(SAMPLE), str(tmp_path / "o.mkv"), "--model", str(MODELS / "base.pt")),
                          "base.pt", "pip install 'stream_denoise[torch]'")
    assert_one_line_error(without_torch("run", "--source", str(SAMPLE), "--no-publish", "--output", str(tmp_path / "o.mkv"),
                                        "--model", str(MODELS / "lite.pt")), "lite.pt", "stream_denoise[torch]")
    assert_one_line_error(without_torch("fine-tune", str(SAMPLE), "--out", str(tmp_path / "m.pt")), "torch",
                          "stream_denoise[torch]")
    assert not (tmp_path / "o.mkv").exists()


@pytest.mark.parametrize("out", ["/proc/x.mkv", "/sys/x.mp4"])
def test_unwritable_output_is_one_line(out):
    assert_one_line_error(cli("denoise", str(SAMPLE), out, "--model", "lite"), "cannot write", out)
    assert_one_line_error(cli("run", "--source", str(SAMPLE), "--no-publish", "--output", out, "--model", "lite"),
                          "cannot write", out)


def test_model_files_get_an_extension_run_accepts(tmp_path):
    assert_one_line_error(cli("fine-tune", str(SAMPLE), "--out", str(tmp_path / "mycam"), "--steps", "2", "--minutes", "0.05",
                              "--max-frames", "20"), "mycam", ".pt")
    assert_one_line_error(cli("export", "lite", "--out", str(tmp_path / "mycam")), "mycam", ".onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_camera_is_one_line_without_opencv_warnings(tmp_path):
    assert_one_line_error(cli("run", "--source", "7", "--no-publish", "--output", str(tmp_path / "o.mkv")),
                          "cannot open camera")


def test_subscribe_help_says_what_each_option_does():
    out = " ".join(subprocess.run([sys.executable, "-m", "stream_denoise", "subscribe", "--help"], capture_output=True,
                                  text=True).stdout.split())
    assert "--out OUT video file to write" in out and "SIGTERM" in out
    assert "--idle-timeout IDLE_TIMEOUT once recording" in out and "record through camera outages" in out


def test_strength_out_of_range_is_one_line(tmp_path):
    res = cli("denoise", str(SAMPLE), str(tmp_path / "o.mkv"), "--strength", "9")
    assert_one_line_error(res, "strength")
    assert res.returncode == 2 and not (tmp_path / "o.mkv").exists()
