"""The ``cuda`` backend and the shared GPU path (backends.cuda_windows).

Parametrised over ``device``: on the CPU the same GpuExecutor/GpuWindowRunner code runs eagerly and
must equal the numpy Denoiser bit for bit; on a GPU (marked ``gpu``) within a level or two, and
fp16 within the fp16 tolerance of ONNX Runtime fp32. CUDA-graph replay must equal the eager run.
"""

from __future__ import annotations

import numpy as np
import pytest

C, WIDE = 25, 32  # the lite test network's input (5 frames x (RGB + 2 noise maps)) and its tensor-core width

torch = pytest.importorskip("torch")

from stream_denoise.backends.torch_model import TorchBackend  # noqa: E402


def test_window_runner_matches_the_denoiser(device, tiny_model, noisy_frames, denoiser_outputs, runner_outputs):
    frames = noisy_frames(9, 30, 42)  # not multiples of 4: padding by reflection is exercised
    ref = denoiser_outputs(TorchBackend(str(tiny_model), "cpu", threads=1), frames)
    backend = TorchBackend(str(tiny_model), device, threads=1)
    runner = backend.window_runner()
    got = runner_outputs(runner, frames)
    assert len(got) == len(ref) == len(frames)
    for a, b in zip(ref, got):
        assert b.shape == a.shape and b.dtype == np.uint8
        diff = np.abs(a.astype(np.int16) - b)
        if device == "cpu":
            assert diff.max() == 0
        else:  # cuDNN (TF32) vs CPU kernels: rounding flips of one level, rarely
            assert diff.max() <= 2 and (diff > 0).mean() < 0.02
    # a new size after flush(); a size change without it is refused
    more = noisy_frames(6, 20, 24, seed=1)
    assert len(runner_outputs(runner, more)) == 6
    runner.push(more[0])
    with pytest.raises(ValueError, match="flush"):
        runner.push(noisy_frames(1, 16, 16)[0])


def test_upload_and_denoise_by_key(device, tiny_model, noisy_frames):
    from stream_denoise.denoiser import Denoiser

    frames = noisy_frames(5, 24, 28)
    runner = TorchBackend(str(tiny_model), device, threads=1).window_runner()
    keys = [("cam", 0, i) for i in range(5)]
    for k, f in zip(keys, frames):
        runner.upload(k, f)
        runner.upload(k, f)  # once per key
    ref = Denoiser(TorchBackend(str(tiny_model), "cpu", threads=1)).denoise_window(frames)
    diff = np.abs(runner.denoise(keys).astype(np.int16) - ref)
    assert diff.max() <= (0 if device == "cpu" else 2)
    with pytest.raises(KeyError, match="not uploaded"):
        runner.denoise(keys[:4] + [("cam", 0, 99)])


def test_host_round_trip_matches_the_model(device, tiny_model):
    x = np.random.default_rng(0).random((1, C, 32, 44), dtype=np.float32)
    expected = TorchBackend(str(tiny_model), "cpu", threads=1).infer(x)
    backend = TorchBackend(str(tiny_model), device, threads=1)
    for _ in range(3):  # eager, then capture, then replay on a GPU
        y = backend.infer(x)
        assert y.shape == (1, 3, 32, 44) and y.dtype == np.float32
        assert np.abs(y - expected).max() < (1e-6 if device == "cpu" else 3e-3)


@pytest.mark.gpu
def test_cuda_fp16_is_within_fp16_tolerance_of_onnxruntime_fp32(cuda, tiny_model, tmp_path):
    from stream_denoise.backends.onnx_cpu import OnnxRuntimeBackend
    from stream_denoise.export.to_onnx import export_onnx

    ort = OnnxRuntimeBackend(export_onnx(tiny_model, tmp_path / "m.onnx"), threads=2)
    backend = TorchBackend(str(tiny_model), "cuda", precision="fp16")
    assert backend.dtype == cuda.float16
    rng = np.random.default_rng(1)
    for h, w in [(64, 96), (144, 176), (360, 640)]:
        x = rng.random((1, C, h, w), dtype=np.float32)
        for _ in range(3):
            assert np.abs(backend.infer(x) - ort.infer(x)).max() < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graph_replay_equals_the_eager_run(cuda, tiny_model, precision):
    graphed = TorchBackend(str(tiny_model), "cuda", precision=precision, graphs=True)
    eager = TorchBackend(str(tiny_model), "cuda", precision=precision, graphs=False)
    rng = np.random.default_rng(2)
    xs = [rng.random((1, C, 72, 128), dtype=np.float32) for _ in range(4)]
    first = graphed.infer(xs[0]).copy()  # the warm (eager) run
    for x in xs[1:] + [xs[0]]:
        y = graphed.infer(x).copy()  # captured on the first of these, replayed after
        assert np.allclose(y, eager.infer(x), rtol=0, atol=1e-6 if precision == "fp32" else 1e-3)
    assert graphed.executor.graph_active and graphed.executor.captures == 1
    assert np.array_equal(y, first)  # the replayed graph reproduces the eager result exactly
    assert not eager.executor.graph_active and eager.executor.captures == 0
    x2 = rng.random((1, C, 40, 60), dtype=np.float32)  # a new shape: new buffers, recaptured
    runs = [graphed.infer(x2).copy() for _ in range(3)]
    assert graphed.executor.captures == 2
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])


@pytest.mark.gpu
def test_window_runner_graphs_and_fp16_on_the_gpu(cuda, tiny_model, tmp_path, noisy_frames, denoiser_outputs, runner_outputs):
    from stream_denoise.backends.onnx_cpu import OnnxRuntimeBackend
    from stream_denoise.export.to_onnx import export_onnx

    frames = noisy_frames(12, 90, 160)
    ref = denoiser_outputs(OnnxRuntimeBackend(export_onnx(tiny_model, tmp_path / "m.onnx"), threads=2), frames)
    backend = TorchBackend(str(tiny_model), "cuda", precision="fp16")
    got = runner_outputs(backend.window_runner(), frames)
    assert backend.executor.graph_active
    for a, b in zip(ref, got, strict=True):
        assert np.abs(a.astype(np.int16) - b).max() <= 6  # fp16: 2e-2 of full scale is ~5 levels


def _windowed(backend_cls):
    """The backend with the Denoiser's device-window path switched on, whatever the device (on the
    CPU the same GpuWindowRunner code runs eagerly, so the path is tested without a GPU)."""
    import dataclasses

    class Windowed(backend_cls):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.capabilities = dataclasses.replace(self.capabilities, device_windows=True)

    return Windowed


def test_denoise_many_is_the_windows_one_by_one(device, tiny_model, noisy_frames):
    streams = [noisy_frames(7, 26, 36, seed=s) for s in range(3)]
    runner = TorchBackend(str(tiny_model), device, threads=1).window_runner()
    runner.reserve(3 * 7)
    for s, frames in enumerate(streams):
        for i, f in enumerate(frames):
            runner.upload((s, i), f)
    windows = [[(s, i) for i in range(t, t + 5)] for s in range(3) for t in (0, 2)]
    batched = runner.denoise_many(windows)
    assert len(batched) == 6 and runner.ex.input((6, C, 28, 36)).shape[0] == 6
    for keys, got in zip(windows, batched):
        one = runner.denoise(keys)
        assert got.shape == (26, 36, 3) and got.dtype == np.uint8
        assert np.abs(one.astype(np.int16) - got).max() <= (0 if device == "cpu" else 1)
    assert runner.denoise_many([]) == []
    with pytest.raises(ValueError, match="5 frames per window"):
        runner.denoise_many([windows[0][:4]])


def test_denoiser_keeps_the_window_on_the_device(device, tiny_model, noisy_frames):
    from stream_denoise.denoiser import Denoiser
    from stream_denoise.frame import Frame

    frames = [Frame(f, i, None, 0.0, "cam") for i, f in enumerate(noisy_frames(14, 30, 42))]
    host = Denoiser(TorchBackend(str(tiny_model), "cpu", threads=1))
    gpu = Denoiser(_windowed(TorchBackend)(str(tiny_model), device, threads=1))
    assert gpu._gpu is not None and host._gpu is None
    pairs = []
    for i in range(0, 12, 4):  # decoded frames handed over together: one batch of their windows
        pairs += zip(host.push_many(frames[i : i + 4]), gpu.push_many(frames[i : i + 4]), strict=True)
    pairs += zip(host.push(frames[12]), gpu.push(frames[12]), strict=True)
    more = noisy_frames(6, 20, 28, seed=3)  # a new segment of another size: the window restarts
    pairs += zip(host.push(frames[13]), gpu.push(frames[13]), strict=True)
    for i, f in enumerate(more):
        frame = Frame(f, i, None, 0.0, "cam", segment=1)
        pairs += zip(host.push(frame), gpu.push(frame), strict=True)
    pairs += zip(host.flush(), gpu.flush(), strict=True)
    assert len(pairs) == 20 and gpu.times.frames == 20
    assert gpu.times.calls < host.times.calls + 1 and gpu.times.total["post"] == 0.0
    for a, b in pairs:
        assert (a.segment, a.index) == (b.segment, b.index)
        diff = np.abs(a.pixels.astype(np.int16) - b.pixels)
        assert diff.max() <= (0 if device == "cpu" else 2)
    assert gpu._gpu.capacity <= 2 * 5 + 2  # the pool never grew: a stream needs K + look-ahead planes
    bad = [Frame(np.zeros((8, 8, 3), np.float32), i, None, 0.0, "cam", segment=2) for i in range(3)]
    with pytest.raises(ValueError, match="uint8"):
        gpu.push_many(bad)


@pytest.mark.parametrize("window", ["centered", "causal"])
@pytest.mark.parametrize("shuffle,fuse", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("arch,pairs", [("lite", 5), ("base", 15), ("v1-base", 13)])
def test_gpu_form_is_the_same_function(window, shuffle, fuse, arch, pairs):
    """pairs: the conv + ReLU pairs fused (lite: 2 downsamplings, 2 mid, 1 on the way up; base: the
    stem, 3 downsamplings, 3 encoder, 4 mid, 4 decoder convs; the first base: 2 downsamplings, 2
    encoder, 6 mid, 3 decoder convs)."""
    from stream_denoise.model import create_model
    from stream_denoise.model.gpu_form import GpuForm
    from stream_denoise.model.net import Arch, VideoDenoiser

    torch.manual_seed(3)
    if arch == "v1-base":  # a noise-blind first-generation network (15 inputs, no stem)
        model = VideoDenoiser(Arch.from_v1(c1=64, c2=128, n_mid=6, c0=32, half_conv=True, half_depth=2, full_depth=1),
                              target=4 if window == "causal" else None)
    else:
        model = create_model(arch, window=window)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    form = GpuForm(model, shuffle=shuffle, fuse=fuse)
    c = model.in_channels
    assert form.in_channels == -(-c // 8) * 8 and all(m.out_channels % 8 == 0 for m in form.modules()
                                                       if isinstance(m, torch.nn.Conv2d))
    fused = [m for m in form.modules() if type(m).__name__ == "_ConvReLU"]
    assert len(fused) == (pairs if fuse else 0)
    x = torch.rand(2, c, 24, 40)
    wide = torch.cat([x, torch.zeros(2, form.in_channels - c, 24, 40)], dim=1)
    with torch.no_grad():
        assert (form(wide) - model(x)).abs().max() < 1e-5


def test_executor_gives_a_wide_runner_zero_padded_channels(tiny_model):
    from stream_denoise.backends.cuda_windows import GpuExecutor
    from stream_denoise.backends.torch_model import TorchRunner
    from stream_denoise.model import load_model
    from stream_denoise.model.gpu_form import GpuForm

    model = load_model(tiny_model)
    ex = GpuExecutor(TorchRunner(GpuForm(model), torch.float32, torch.contiguous_format), "cpu")
    x = np.random.default_rng(4).random((1, C, 32, 44), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    for _ in range(2):
        assert np.abs(ex.infer_host(x) - expected).max() < 1e-5
    assert ex.input((1, C, 32, 44)).shape[1] == C and ex._full.shape[1] == WIDE
    assert ex._full[:, C:].abs().max() == 0  # the padding channels are never written


@pytest.mark.gpu
@pytest.mark.parametrize("form", ["padded", "shuffle", "fused"])
def test_cuda_gpu_forms_equal_the_plain_network(cuda, tiny_model, form):
    rng = np.random.default_rng(5)
    x = rng.random((2, C, 72, 128), dtype=np.float32)
    plain = TorchBackend(str(tiny_model), "cuda", form="plain").infer(x).copy()
    backend = TorchBackend(str(tiny_model), "cuda", form=form)
    assert backend.executor.runner.in_channels == WIDE
    for _ in range(3):  # eager, capture, replay
        assert np.abs(backend.infer(x) - plain).max() < 3e-3  # TF32 convolutions on both sides


def test_a_reused_denoiser_never_takes_the_last_streams_frames(device, tiny_model, noisy_frames):
    """Two streams with the same frame keys (same source, segment 0, indices from 0) through one
    Denoiser, flushed in between: the second must not be handed the first one's planes on the GPU."""
    from stream_denoise.denoiser import Denoiser
    from stream_denoise.frame import Frame

    host = Denoiser(TorchBackend(str(tiny_model), "cpu", threads=1))
    gpu = Denoiser(_windowed(TorchBackend)(str(tiny_model), device, threads=1))
    for seed in (0, 1):
        frames = [Frame(f, i, None, 0.0, "cam") for i, f in enumerate(noisy_frames(7, 20, 24, seed=seed))]
        a = [o.pixels for f in frames for o in host.push(f)] + [o.pixels for o in host.flush()]
        b = [o.pixels for f in frames for o in gpu.push(f)] + [o.pixels for o in gpu.flush()]
        assert len(a) == len(b) == 7
        for x, y in zip(a, b):
            assert np.abs(x.astype(np.int16) - y).max() <= (0 if device == "cpu" else 2)


@pytest.mark.parametrize("windows_on_device", [True, False])
@pytest.mark.parametrize("max_batch", [None, 3])
def test_cameras_share_the_backend_in_batches(device, tiny_model, noisy_frames, windows_on_device, max_batch):
    """Six cameras of two sizes (one thread each) through one BatchingBackend of batches up to 4, on
    the device-window path and on the host path: each camera gets what its own Denoiser gives alone,
    windows of several cameras share runs, a backend's ``max_batch`` (a TensorRT profile's) is never
    exceeded, and on the device every frame goes up once (one runner per frame size, holding every
    camera's window)."""
    import threading

    from stream_denoise.denoiser import Denoiser
    from stream_denoise.frame import Frame
    from stream_denoise.multicam import BatchingBackend

    cams = {f"cam{c}": [Frame(f, i, None, 0.0, f"cam{c}") for i, f in enumerate(noisy_frames(10, *size, seed=c))]
            for c, size in enumerate([(22, 30)] * 3 + [(26, 34)] * 3)}
    expected = {}
    for name, frames in cams.items():
        den = Denoiser(TorchBackend(str(tiny_model), "cpu", threads=1))
        expected[name] = [o.pixels for f in frames for o in den.push(f)] + [o.pixels for o in den.flush()]
    cls = _windowed(TorchBackend) if windows_on_device else TorchBackend
    backend = cls(str(tiny_model), device, threads=1)
    if max_batch:  # a backend that declares a batch limit (a TensorRT profile's)
        import dataclasses

        backend.capabilities = dataclasses.replace(backend.capabilities, max_batch=max_batch)
    calls: list[int] = []  # windows per network run
    runners: list = []
    uploads = [0]
    if windows_on_device:
        make_runner = backend.window_runner

        def window_runner():  # the real runner, its calls counted
            r = make_runner()
            runners.append(r)
            many, pre = r.denoise_many, r._preprocess
            r.denoise_many = lambda w: calls.append(len(w)) or many(w)
            r._preprocess = lambda u8, block, lut: uploads.__setitem__(0, uploads[0] + 1) or pre(u8, block, lut)
            return r

        backend.window_runner = window_runner  # type: ignore[method-assign]
    else:
        infer = backend.infer
        backend.infer = lambda x: calls.append(len(x)) or infer(x)  # type: ignore[method-assign]
    shared = BatchingBackend(backend, max_size=4, max_wait_s=0.05)
    got: dict[str, list] = {}
    errors: list[BaseException] = []

    def camera(name: str) -> None:
        client = shared.client()
        den = Denoiser(client)
        assert (den._gpu is not None) == windows_on_device  # the client offers the shared window runner
        try:
            out = []
            for f in cams[name]:
                with client.busy():
                    out += [o.pixels for o in den.push(f)]
            got[name] = out + [o.pixels for o in den.flush()]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=camera, args=(n,)) for n in cams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert not errors, errors
        for name in cams:
            assert len(got[name]) == 10
            for a, b in zip(expected[name], got[name]):  # batches of 1-4: kernels round differently by batch size
                diff = np.abs(a.astype(np.int16) - b)
                assert diff.max() <= (1 if device == "cpu" else 2) and (diff > 0).mean() < (0.01 if device == "cpu" else 0.02)
        assert shared.stats.windows == 60 and shared.stats.largest > 1  # cameras shared runs
        assert sum(calls) == 60 and max(calls) <= (max_batch or 4)
        if windows_on_device:
            assert len(runners) == 2 and uploads[0] == 60  # each frame went up once
            assert all(r.capacity <= 6 * 6 + 6 for r in runners)  # every camera's window + its next frame
        bad = Denoiser(shared.client())
        with pytest.raises(ValueError, match="uint8"):  # fails that camera alone, before any batch
            bad.push_many([Frame(np.zeros((8, 8, 3), np.float32), i, None, 0.0, "bad") for i in range(3)])
    finally:
        shared.close()


def test_executor_keeps_recent_shapes_and_batches_run_in_buckets(device, tiny_model, noisy_frames):
    backend = TorchBackend(str(tiny_model), device, threads=1)
    ex = backend.executor
    ex.max_shapes = 2
    a, b, c = (1, C, 16, 20), (2, C, 16, 20), (4, C, 16, 20)
    xa = ex.input(a)
    assert ex.input(b) is not xa and ex.input(a) is xa  # back to a shape it has: same tensors
    ex.input(c)  # a third shape evicts the least recently used (b)
    assert ex.input(a) is xa and list(ex._shapes) == [c, a]
    runner = backend.window_runner()
    assert [runner.bucket(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
    frames = noisy_frames(7, 16, 20)
    for i, f in enumerate(frames):
        runner.upload(i, f)
    windows = [list(range(t, t + 5)) for t in (0, 1, 2)]
    three = runner.denoise_many(windows)  # runs as a batch of 4, the fourth row dropped
    assert len(three) == 3 and tuple(ex._cur.x.shape)[0] == 4
    for keys, got in zip(windows, three):
        assert np.abs(runner.denoise(keys).astype(np.int16) - got).max() <= (0 if device == "cpu" else 1)


@pytest.mark.gpu
def test_alternating_batch_sizes_replay_their_graphs(cuda, tiny_model, noisy_frames):
    runner = TorchBackend(str(tiny_model), "cuda", precision="fp16").window_runner()
    frames = noisy_frames(9, 36, 64)
    for i, f in enumerate(frames):
        runner.upload(i, f)
    first: dict[int, list] = {}
    for n in (2, 4, 2, 4, 3, 2, 4):  # buckets 2 and 4: two graphs, captured once each
        out = runner.denoise_many([list(range(t, t + 5)) for t in range(n)])
        ref = first.setdefault(n, out)
        assert all(np.array_equal(p, q) for p, q in zip(out, ref))
    assert runner.ex.captures == 2
