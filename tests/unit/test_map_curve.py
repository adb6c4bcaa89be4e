"""The map curve (``noise_level.MapCurve``): what a noise-aware network is told about strong noise.
It is part of the input contract (``planes.Layout``): the model file carries it, every runtime reads
the noise maps through it, and the graph stays as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_denoise import noise_level
from stream_denoise.noise_level import MAP_SCALE, MapCurve
from stream_denoise.planes import Layout, window_input

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from stream_denoise.backends.onnx_cpu import OnnxRuntimeBackend  # noqa: E402
from stream_denoise.denoiser import Denoiser  # noqa: E402
from stream_denoise.errors import ModelError  # noqa: E402
from stream_denoise.export.to_onnx import export_onnx  # noqa: E402
from stream_denoise.model import create_model, load_model, save_model  # noqa: E402
from stream_denoise.model.net import Arch, VideoDenoiser  # noqa: E402

SIGMAS = np.array([[20.0, 35.0, 50.0, 10.0], [25.0, 40.0, 45.0, 12.0]], np.float32)  # both sides of 30 levels


def test_the_curve_raises_only_the_map_values_above_the_knee():
    plain, curved = noise_level.lut(SIGMAS), noise_level.lut(SIGMAS, MapCurve(30, 0.4))
    want = plain + 0.4 * np.maximum(plain - 30 / MAP_SCALE, 0)  # the documented formula, by hand
    assert np.allclose(curved, want, atol=1e-7)
    low = plain <= 30 / MAP_SCALE
    assert low.any() and (~low).any() and np.array_equal(curved[low], plain[low])
    frame = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    assert np.array_equal(noise_level.level_map(frame, SIGMAS, MapCurve(30, 0.4)), curved[:, noise_level.luma(frame)])


def test_the_curve_travels_as_text_and_a_bad_one_is_refused():
    assert MapCurve.from_meta(MapCurve(30, 0.4).to_meta()) == MapCurve(30, 0.4)
    assert MapCurve(30, 0.4).to_meta() == "30,0.4" and MapCurve(12.5, 1).to_meta() == "12.5,1"
    odd = MapCurve(100 / 3, 1 / 3)  # every runtime reads the file's curve exactly, not to 6 digits
    assert MapCurve.from_meta(odd.to_meta()) == odd
    assert '"' not in MapCurve(30, 0.4).to_meta()  # it is a Triton parameter's string value too
    assert MapCurve.from_meta(None) is None and MapCurve.from_meta("") is None
    for bad in ("30", "a,b", "30,5"):
        with pytest.raises(ValueError):
            MapCurve.from_meta(bad)
    with pytest.raises(ValueError, match="knee"):
        MapCurve(-1, 0.4)
    layout = Layout.from_meta({"frames": "5", "target": "2", "stride": "4", "noise_planes": "2", "map_curve": "30,0.4"})
    assert layout.curve == MapCurve(30, 0.4) and Layout.from_meta({"frames": "5", "target": "2", "stride": "4"}).curve is None


def test_a_model_file_keeps_its_curve_and_files_without_one_are_unchanged(tmp_path: Path):
    model = create_model("lite").eval()
    save_model(model, tmp_path / "plain.pt")
    assert "map_curve" not in torch.load(tmp_path / "plain.pt", weights_only=True)["config"]
    assert load_model(tmp_path / "plain.pt").layout.curve is None
    model.set_curve(MapCurve(30, 0.4))
    save_model(model, tmp_path / "curved.pt")
    back = load_model(tmp_path / "curved.pt")
    assert back.map_curve == back.layout.curve == MapCurve(30, 0.4)
    assert set(back.state_dict()) == set(create_model("lite").state_dict())  # the curve is config, not weights
    model.set_curve(MapCurve(30, 0))  # a zero slope is no curve
    assert model.map_curve is None and "map_curve" not in model.config()
    with pytest.raises(ValueError, match="noise-aware"):  # a first-generation network has no maps to curve
        VideoDenoiser(Arch(widths=(8, 16, 48), enc=(0,), mid=2, dec=(0, 1)), curve=MapCurve(30, 0.4))
    blob = torch.load(tmp_path / "curved.pt", weights_only=True)
    blob["config"]["map_curve"] = {"knee": 30, "slope": 9}
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="do not match"):
        load_model(tmp_path / "bad.pt")


def test_onnx_runtime_reads_the_maps_through_the_files_curve_and_the_graph_is_unchanged(tmp_path: Path):
    model = create_model("lite").eval()
    plain_onnx = export_onnx(save_model(model, tmp_path / "plain.pt"), tmp_path / "plain.onnx")
    model.set_curve(MapCurve(30, 0.4))
    path = export_onnx(save_model(model, tmp_path / "m.pt"), tmp_path / "m.onnx")
    graphs = [onnx.load(str(p)).graph.node for p in (plain_onnx, path)]
    assert [n.op_type for n in graphs[0]] == [n.op_type for n in graphs[1]]  # no cost per frame
    backend = OnnxRuntimeBackend(path, threads=1)
    assert backend.map_curve == MapCurve(30, 0.4) and Layout.of(backend).curve == MapCurve(30, 0.4)
    rng = np.random.default_rng(1)
    frames = [(rng.normal(60, 40, (32, 48, 3))).clip(0, 255).astype(np.uint8) for _ in range(5)]
    den = Denoiser(backend)
    got = den.denoise_window(frames)
    sigmas = den.noise.sigmas if den.noise is not None else None
    assert sigmas is not None and sigmas.max() > 30  # a reading the curve acts on
    with torch.no_grad():  # the PyTorch network fed through its own layout: the same maps, the same output
        y = model(torch.from_numpy(window_input(np.stack(frames)[None], model.layout, den.noise.told)))[0].numpy()
        bare = model(torch.from_numpy(window_input(np.stack(frames)[None], Layout(5, 2, 4, 2), den.noise.told)))[0].numpy()
    want = np.clip(y.transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert np.abs(y - bare).max() > 1e-3  # the curve changed what the network was told
