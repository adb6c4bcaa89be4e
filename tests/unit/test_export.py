"""The exported ONNX graph matches the PyTorch model and uses only natively supported operators."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from stream_denoise.backends.onnx_cpu import OnnxRuntimeBackend  # noqa: E402
from stream_denoise.export.to_onnx import export_onnx  # noqa: E402
from stream_denoise.model import create_model, load_model, save_model  # noqa: E402
from stream_denoise.planes import Layout  # noqa: E402

NATIVE = {"Conv", "ConvTranspose", "Relu", "Add", "Concat", "Slice", "Constant"}


@pytest.mark.parametrize("arch,window", [("lite", "centered"), ("base", "centered"), ("lite", "causal")])
def test_onnx_matches_torch(tmp_path, arch, window):
    torch.manual_seed(1)
    model = create_model(arch, window=window)
    for p in model.parameters():  # non-trivial weights
        p.data.add_(torch.randn_like(p) * 0.05)
    pt = save_model(model, tmp_path / "m.pt")
    path = export_onnx(pt, tmp_path / "m.onnx")
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version >= 17
    assert {n.op_type for n in graph.graph.node} <= NATIVE
    backend = OnnxRuntimeBackend(path, threads=1)
    assert (backend.frames, backend.target, backend.stride, backend.noise_planes) == (5, model.target, model.stride,
                                                                              model.arch.noise_planes)
    ref = load_model(pt)
    rng = np.random.default_rng(0)
    for h, w in [(32, 32), (64, 96), (144, 176), (272, 640)]:
        x = rng.random((1, model.in_channels, h, w), dtype=np.float32)
        with torch.no_grad():
            expected = ref(torch.from_numpy(x)).numpy()
        assert np.abs(backend.infer(x) - expected).max() < 1e-3


def test_fp16_export_runs_close_to_fp32(tmp_path):
    torch.manual_seed(2)
    model = create_model("lite")
    pt = save_model(model, tmp_path / "m.pt")
    fp32 = OnnxRuntimeBackend(export_onnx(pt, tmp_path / "a.onnx"), threads=1)
    fp16 = OnnxRuntimeBackend(export_onnx(pt, tmp_path / "b.onnx", precision="fp16"), threads=1)
    x = np.random.default_rng(0).random((1, model.in_channels, 64, 64), dtype=np.float32)
    assert np.abs(fp16.infer(x) - fp32.infer(x)).max() < 2e-2


def test_torch_backend_takes_read_only_windows_quietly():
    """Windows are read-only views of the pipeline's slab; torch.from_numpy warns on those."""
    import warnings

    from stream_denoise.backends.torch_model import TorchBackend
    from stream_denoise.model_files import resolve

    backend = TorchBackend(str(resolve("lite", ".pt")), threads=1)
    x = np.random.default_rng(0).random((1, Layout.of(backend).channels, 32, 48), dtype=np.float32)
    x.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = backend.infer(x)
    assert y.shape == (1, 3, 32, 48) and np.isfinite(y).all()
