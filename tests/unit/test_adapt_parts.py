"""The parts of run --adapt that need no trainer: the rolling sample, the model store, the header's
generation, the hot swap's layout check, the config."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from stream_denoise.adapt.reservoir import Reservoir
from stream_denoise.adapt.store import ModelStore, camera_dir
from stream_denoise.config import AdaptConfig, RunConfig
from stream_denoise.config_file import parse
from stream_denoise.errors import ConfigError
from stream_denoise.frame import Frame
from stream_denoise.wire import decode, encode
from stream_denoise.errors import MessageError
from tests.waiting import wait_until

LAYOUT = {"frames": 5, "target": 2, "stride": 4, "noise_planes": 0, "arch": "a"}


def frames(n: int, fps: float = 25.0, start: int = 0, size: tuple[int, int] = (24, 32), segment: int = 0):
    for i in range(start, start + n):
        px = np.zeros((*size, 3), np.uint8)
        px[..., 0], px[..., 1] = i % 256, i // 256  # the pixels say which frame they are
        yield Frame(px, i, i / fps, 1000.0 + i / fps, "cam", segment)


def index_of(pixels: np.ndarray) -> int:
    return int(pixels[0, 0, 0]) + 256 * int(pixels[0, 0, 1])


def test_the_sample_is_bounded_spread_over_time_and_holds_out_the_newest_clips():
    r = Reservoir(slots=4, held=2, clip_frames=5, crop=16, every_s=0.4, seed=0)
    for f in frames(2000):  # 80 s at 25 fps: a clip every 0.4 s (10 frames), 200 clips
        r.offer(f)
    train, held = r.snapshot()
    assert len(train) == 4 and len(held) == 2 and r.samples == 30 and r.ready(4)
    assert all(c.shape == (5, 16, 16, 3) for c in train + held)
    starts = {id(c): [index_of(p) for p in c] for c in train + held}
    assert all(ix == list(range(ix[0], ix[0] + 5)) for ix in starts.values())  # consecutive frames
    held_starts = [starts[id(c)][0] for c in held]
    assert held_starts[1] >= 2000 - 5 - 11 and 10 <= held_starts[1] - held_starts[0] <= 11  # the two newest clips
    train_starts = sorted(starts[id(c)][0] for c in train)
    assert max(train_starts) < held_starts[0] and min(train_starts) < 1000, train_starts  # spread over the whole time




def test_the_sample_records_only_consecutive_frames_and_starts_again_when_cleared():
    r = Reservoir(slots=2, held=1, clip_frames=5, crop=64, every_s=0.1)
    for f in [*frames(3), *frames(10, start=4)]:  # frame 3 dropped: the first clip is abandoned
        r.offer(f)
    train, held = r.snapshot()
    assert [[index_of(p) for p in c] for c in train + held] == [[4, 5, 6, 7, 8], [9, 10, 11, 12, 13]]
    for f in [*frames(3, start=14), *frames(5, start=17, segment=1)]:  # a new segment mid-clip: abandoned too
        r.offer(f)
    train, held = r.snapshot()
    assert [[index_of(p) for p in c] for c in train + held] == [[4, 5, 6, 7, 8], [9, 10, 11, 12, 13],
                                                                 [17, 18, 19, 20, 21]]
    r.clear()
    assert r.samples == 0 and r.snapshot() == ([], [])
    assert not r.ready(1)


def test_the_store_writes_json_last_keeps_a_few_and_skips_what_it_cannot_use(tmp_path, caplog):
    pt, onnx = tmp_path / "c.pt", tmp_path / "c.onnx"
    pt.write_bytes(b"pt")
    onnx.write_bytes(b"onnx")
    store = ModelStore(tmp_path / "models", "rtsp://cam 1/stream", keep=2)
    assert store.dir == camera_dir(tmp_path / "models", "rtsp://cam 1/stream") and "/" not in store.dir.name
    for gen in (1, 2, 3):
        assert store.save(gen, pt, onnx, {"generation": gen, "layout": LAYOUT}) is not None
    assert sorted(p.name for p in store.dir.iterdir()) == [f"gen-000{g}.{s}" for g in (2, 3) for s in ("json", "onnx", "pt")]
    (store.dir / "gen-0004.pt").write_bytes(b"half written: no json yet")
    (store.dir / "gen-0003.onnx").unlink()
    caplog.set_level(logging.WARNING)
    found = list(store.newest(LAYOUT))
    assert [s.generation for s in found] == [2]
    assert json.loads((store.dir / "gen-0002.json").read_text())["generation"] == 2
    assert len(caplog.records) == 1 and "missing" in caplog.records[0].getMessage()
    assert list(store.newest({**LAYOUT, "frames": 3})) == []


def test_the_store_says_once_that_it_cannot_write(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    pt = tmp_path / "c.pt"
    pt.write_bytes(b"pt")
    store = ModelStore(blocker, "cam")
    caplog.set_level(logging.WARNING)
    assert store.save(1, pt, pt, {}) is None and store.save(2, pt, pt, {}) is None
    assert len(caplog.records) == 1 and "adapting in memory only" in caplog.records[0].getMessage()


def test_the_header_carries_the_generation():
    f = Frame(np.zeros((4, 6, 3), np.uint8), 7, 0.28, 1.0, "cam", 0, generation=3)
    header, _ = decode(encode(f, seq=0))
    assert header["generation"] == 3
    parts = encode(Frame(np.zeros((4, 6, 3), np.uint8), 0, None, 1.0, "cam"), seq=0)
    assert decode(parts)[0]["generation"] == 0
    bad = json.loads(bytes(parts[1]))
    bad["generation"] = -1
    with pytest.raises(MessageError, match="generation"):
        decode([parts[0], json.dumps(bad).encode(), parts[2]])
    del bad["generation"]  # an older publisher's message still decodes
    assert "generation" not in decode([parts[0], json.dumps(bad).encode(), parts[2]])[0]


def test_a_swap_to_another_layout_is_refused_and_frames_carry_the_generation():
    from stream_denoise.backends import create_backend
    from stream_denoise.config import ModelConfig
    from stream_denoise.denoiser import Denoiser

    lite = create_backend(ModelConfig(model="lite", backend="onnxruntime", threads=1))
    causal = create_backend(ModelConfig(model="lite-causal", backend="onnxruntime", threads=1))
    try:
        d = Denoiser(lite)
        with pytest.raises(ValueError, match="another layout"):
            d.swap(causal, 1)
        out = [f for fr in frames(4, size=(16, 16)) for f in d.push(fr)]
        assert d.swap(lite, 2) is lite and d.generation == 2
        out += [f for fr in frames(4, start=4, size=(16, 16)) for f in d.push(fr)] + d.flush()
        assert [f.index for f in out] == list(range(8))  # nothing lost or repeated at the swap
        assert [f.generation for f in out] == [0, 0, 2, 2, 2, 2, 2, 2]  # the look-ahead frames: the new model
    finally:
        lite.close()
        causal.close()


def test_adapt_config_is_strict():
    assert RunConfig(source={"uri": "x"}, adapt={}).adapt == AdaptConfig()
    with pytest.raises(ConfigError, match="min_clips"):
        parse(RunConfig, {"source": {"uri": "x"}, "adapt": {"min_clips": 20, "slots": 4}})
    with pytest.raises(ConfigError, match="adapt.crop"):
        parse(RunConfig, {"source": {"uri": "x"}, "adapt": {"crop": 30}})
    with pytest.raises(ConfigError, match="adapt.speed"):
        parse(RunConfig, {"source": {"uri": "x"}, "adapt": {"speed": 1}})


def test_run_adapt_refuses_a_backend_it_cannot_swap(tmp_path):
    from tests.cli_helpers import assert_one_line_error, run_cli

    src = Path(__file__).parents[2] / "stream_denoise" / "data" / "sample_noisy.mp4"
    res = run_cli("run", "--source", str(src), "--adapt", "--backend", "torch", "--no-publish",
                  "--output", str(tmp_path / "o.mkv"))
    assert_one_line_error(res, "--adapt", "onnxruntime")
    res = run_cli("run", "--source", str(src), "--adapt", "--model", "stream_denoise/models/lite.onnx",
                  "--no-publish", "--output", str(tmp_path / "o.mkv"))
    assert_one_line_error(res, "--adapt", ".pt")


def test_a_noise_drift_starts_a_new_sample_and_a_run(tmp_path, caplog, monkeypatch):
    """The adapter's trigger on a real Denoiser (no trainer process is started before a run); the
    adapter thread's noise readings are taken here, one per frame."""
    from stream_denoise.adapt import Adapter
    from stream_denoise.backends import create_backend
    from stream_denoise.config import ModelConfig
    from stream_denoise.denoiser import Denoiser
    from stream_denoise.noise import NoiseSpec, add_noise
    from tests.photo_clips import moving_clip, skimage_photos

    clean = moving_clip(skimage_photos()[1], 24, 96, np.random.default_rng(0))
    quiet = add_noise(clean, NoiseSpec("camera", photons=1000, read_noise=2.0), 1)  # ISO ~400
    loud = add_noise(clean, NoiseSpec("camera", photons=125, read_noise=3.5), 2)  # ISO ~3200
    model = ModelConfig(model="lite", backend="onnxruntime", threads=1)
    backend = create_backend(model)
    adapter = Adapter(AdaptConfig(dir=tmp_path, clip_frames=10, slots=2, held_clips=1, min_clips=1, sample_every_s=0.5),
                      model, "cam", Denoiser(backend))
    caplog.set_level(logging.INFO, logger="stream_denoise.adapt")
    monkeypatch.setattr("stream_denoise.adapt.adapter.READ_EVERY_S", 0.0)
    try:
        i = 0
        for clip in (quiet, quiet, quiet, quiet, quiet, quiet):
            for px in clip:
                adapter.observe(Frame(px, i, i / 25, 1000 + i / 25, "cam"))
                adapter._watch_noise()
                i += 1
        adapter._due = False  # as after the first run
        assert adapter.reservoir.ready(1) and adapter._epoch == 0
        for clip in (loud, loud, loud):
            for px in clip:
                adapter.observe(Frame(px, i, i / 25, 1000 + i / 25, "cam"))
                adapter._watch_noise()
                i += 1
        assert adapter._epoch == 1 and adapter._due
        train, held = adapter.reservoir.snapshot()  # the sample began again: only clips of the loud noise
        assert held and all(any(np.array_equal(c[0], f) for f in loud) for c in train + held)
        lines = [r.getMessage() for r in caplog.records if "noise changed" in r.getMessage()]
        assert len(lines) == 1, lines
    finally:
        adapter.close()
        backend.close()


def test_a_full_disk_costs_one_line_and_leaves_no_partial_model(tmp_path, caplog):
    """A real full file system: a 64 KiB tmpfs (needs root and the right to mount; skipped otherwise)."""
    import subprocess

    from stream_denoise import model_files

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        store = ModelStore(mnt, "cam")
        caplog.set_level(logging.WARNING)
        pt, onnx = model_files.resolve("lite", ".pt"), model_files.resolve("lite", ".onnx")
        assert pt.stat().st_size > 64 * 1024
        assert store.save(1, pt, onnx, {"generation": 1, "layout": LAYOUT}) is None
        assert store.save(2, pt, onnx, {"generation": 2, "layout": LAYOUT}) is None
        assert len(caplog.records) == 1 and "No space left on device" in caplog.records[0].getMessage()
        assert list(store.dir.iterdir()) == []  # the temporary files went with the failure
        assert list(store.newest(LAYOUT)) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_job_the_trainer_process_cannot_take_is_a_failed_run_and_the_next_job_gets_a_new_process(tmp_path):
    """The process may end between the check that it lives and the job's send (a broken pipe): that is
    TrainerDied, which the adapter logs and retries, not an OSError that would end the adapt thread."""
    from stream_denoise.adapt.trainer import Job, TrainerDied, TrainerProcess
    from tests import adapt_trainers

    trainer = TrainerProcess(adapt_trainers.copy_parent, nice=0)
    job = Job(tmp_path / "no-model.pt", [], [], tmp_path, 0.01, 1, 1, 32)
    try:
        trainer.submit(job, 60)
        first = trainer.pid
        assert wait_until(lambda: trainer.poll(0.2) is not None, 60)  # an error line: there is no model to copy
        assert trainer._conn is not None
        trainer._conn.close()  # the pipe breaks while the process lives
        with pytest.raises(TrainerDied, match="could not take the job"):
            trainer.submit(job, 60)
        trainer.submit(job, 60)
        assert trainer.restarts == 1 and trainer.pid != first
        assert wait_until(lambda: trainer.poll(0.2) is not None, 60)  # the new process answers
    finally:
        trainer.close()


def test_closing_while_a_job_is_still_being_written_never_corrupts_the_pipe(tmp_path, capfd):
    """A job's send blocks until the new process reads it (after its imports: seconds on a busy
    machine). A pipeline closing meanwhile must not write its goodbye beside it (CI 2026-12-08: the
    process died on a corrupted message, with a traceback): close() kills it instead, promptly, and
    the writer gets a failed run."""
    import threading
    import time

    from stream_denoise.adapt.trainer import Job, TrainerDied, TrainerProcess
    from tests import adapt_trainers

    trainer = TrainerProcess(adapt_trainers.copy_parent, nice=0)
    clips = [np.zeros((16, 512, 512, 3), np.uint8) for _ in range(16)]  # 200 MB: the send outlasts the imports
    job = Job(tmp_path / "no-model.pt", clips, clips[:1], tmp_path, 0.01, 1, 1, 32)
    outcome: list[object] = []

    def submit() -> None:
        try:
            trainer.submit(job, 60)
            outcome.append("sent")
        except TrainerDied as exc:
            outcome.append(exc)

    writer = threading.Thread(target=submit)
    writer.start()
    assert wait_until(lambda: trainer.pid is not None, 30)
    time.sleep(2.5)  # the process has imported torch and is reading the job
    t0 = time.monotonic()
    trainer.close(wait_s=0.5)
    assert time.monotonic() - t0 < 15
    writer.join(timeout=30)
    assert not writer.is_alive() and len(outcome) == 1
    assert trainer._proc is None
    err = capfd.readouterr().err
    assert "UnpicklingError" not in err and "Traceback" not in err, err
