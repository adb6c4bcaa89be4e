"""Quality: PSNR / SSIM / flicker per clip and noise condition for the noisy input, every classical
peer (grid-searched for its best PSNR on the scored frames), and our network zero-shot, after
self-supervised fine-tuning on the recorded half, and trained supervised on it (upper bound).

Writes ``quality.json`` (after every clip x condition, so an interrupted run keeps what it did)
and picture crops under the cache for ``pictures``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import clips, metrics, models, peers
from .report import machine_info

log = logging.getLogger(__name__)


@dataclass
class QualitySettings:
    clips: list[str] = field(default_factory=lambda: list(clips.CLIPS))
    conditions: list[str] = field(default_factory=lambda: ["gaussian15", "gaussian30", "gaussian50", "lowlight-iso1600",
                                                           "lowlight-iso6400", "cctv"])
    frames: int = 60  # per clip (at most its length): the recorded part first, then the live (scored) part
    recorded: int | None = None  # frames of the recorded part (default: half; clips.MIN_LIVE stay live)
    crop: tuple[int, int] | None = None  # (W, H) centre crop of the clean footage
    models: list[str] = field(default_factory=lambda: ["lite", "base", "lite-causal"])  # zero-shot
    adapt_models: list[str] = field(default_factory=lambda: ["lite"])  # fine-tuned + supervised
    supervised: bool = True  # also train the adapt models supervised (the upper bound), on the same budget
    ft_minutes: float = 3.0
    ft_steps: int = 3000  # `stream-denoise fine-tune`'s default (cosine schedule length); minutes usually end it first
    peers: list[str] = field(default_factory=lambda: list(peers.PEERS))
    quick_grids: bool = False
    bm4d_frames: int = 5  # BM4D runs at ~0.1 fps: scored on the first frames of the live half...
    bm4d_crop: tuple[int, int] = (192, 144)  # ...centre-cropped to (W, H); every method is also scored there
    picture_crop: int = 128
    threads: int = 2
    seed: int = 0
    allow_untrained: bool = False


def run(s: QualitySettings, results: Path, cache: Path, command: str) -> dict:
    results.mkdir(parents=True, exist_ok=True)
    out_path = results / "quality.json"
    refs, skipped = models.resolve_many(s.models + s.adapt_models, cache, s.allow_untrained)
    doc: dict = {"meta": {**machine_info(), "command": command}, "settings": _settings(s), "skipped_models": skipped,
                 "runs": []}
    for name in s.clips:
        for cond in s.conditions:
            t0 = time.monotonic()
            clip = clips.make(name, cond, s.frames, s.crop, cache, s.seed, s.recorded)
            doc["runs"].append(_one(clip, s, refs, cache))
            out_path.write_text(json.dumps(doc, indent=1))
            log.info("quality %s/%s done in %.0f s", name, cond, time.monotonic() - t0)
    return doc


def _settings(s: QualitySettings) -> dict:
    d = asdict(s)
    d["grids"] = peers.QUICK_GRIDS if s.quick_grids else peers.GRIDS
    return d


def _subset(s: QualitySettings, live_len: int, h: int, w: int) -> tuple[slice, slice, slice]:
    """(frames, rows, cols) of the live half that BM4D denoises and every method is also scored on."""
    n = max(1, min(s.bm4d_frames, live_len))
    cw, ch = min(s.bm4d_crop[0], w), min(s.bm4d_crop[1], h)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return slice(0, n), slice(y0, y0 + ch), slice(x0, x0 + cw)


def _one(clip: clips.NoisyClip, s: QualitySettings, refs: dict[str, models.ModelRef], cache: Path) -> dict:
    noisy, clean = clip.live
    t_len, h, w = noisy.shape[:3]
    ft_, fy, fx = _subset(s, t_len, h, w)
    sub_clean = clean[ft_, fy, fx]
    # the picture: a crop inside the subset region, from a frame BM4D also denoised
    pf = (ft_.stop - 1) // 2
    pc = min(s.picture_crop, fy.stop - fy.start, fx.stop - fx.start)
    py, px = fy.start + (fy.stop - fy.start - pc) // 2, fx.start + (fx.stop - fx.start - pc) // 2
    pic = {"clean": clean[pf, py : py + pc, px : px + pc], "noisy": noisy[pf, py : py + pc, px : px + pc]}
    sigma = clip.sigma
    run: dict = {"clip": clip.name, "condition": clip.condition, "seed": clip.seed, "sigma": round(sigma, 3),
                 "shape": list(clip.clean.shape[:3]), "recorded_frames": clip.split, "scored_frames": t_len,
                 "subset": {"frames": ft_.stop, "crop": [fx.stop - fx.start, fy.stop - fy.start]}, "methods": {}}
    methods = run["methods"]

    def add(key: str, out: np.ndarray, entry: dict, subset_only: bool = False) -> None:
        if subset_only:
            sc = metrics.score(out, sub_clean)
            sc["psnr_subset"] = sc["psnr"]
            pic[key] = out[pf, py - fy.start : py - fy.start + pc, px - fx.start : px - fx.start + pc]
        else:
            sc = metrics.score(out, clean)
            sc["psnr_subset"] = float(np.mean([metrics.psnr(o, c) for o, c in zip(out[ft_, fy, fx], sub_clean, strict=True)]))
            pic[key] = out[pf, py : py + pc, px : px + pc]
        methods[key] = {**entry, **sc, "subset_only": subset_only}

    add("noisy", noisy, {"kind": "input", "label": "noisy input"})
    grids = peers.QUICK_GRIDS if s.quick_grids else peers.GRIDS
    for pname in s.peers:
        peer = peers.PEERS[pname]
        why = peer.available()
        if why:
            methods[pname] = {"kind": "peer", "label": peer.label, "skipped": why}
            continue
        src = noisy[ft_, fy, fx] if peer.subset else noisy
        target = sub_clean if peer.subset else clean
        best: tuple[float, dict, np.ndarray, float] | None = None
        grid_log = []
        for p in peers.points(grids[pname]):
            out, sec = peer.timed(src, p, sigma, s.threads)
            v = float(np.mean([metrics.psnr(o, c) for o, c in zip(out, target, strict=True)]))
            grid_log.append({"params": p, "psnr": round(v, 3)})
            if best is None or v > best[0]:
                best = (v, p, out, sec)
        assert best is not None
        _, p, out, sec = best
        edge = [k for k, v in grids[pname].items() if len(v) > 1 and p[k] in (min(v), max(v))]
        add(pname, out, {"kind": "peer", "label": peer.label, "params": p, "at_grid_edge": edge, "grid": grid_log,
                         "seconds": round(sec, 3),
                         "fps": len(src) / sec, "fps_size": [src.shape[2], src.shape[1]]}, subset_only=peer.subset)
        log.info("  %s %s: %.2f dB (%s)", clip.name, pname, methods[pname]["psnr"], p)
    work = cache / "models"
    work.mkdir(parents=True, exist_ok=True)
    for mname in [m for m in s.models if m in refs]:
        ref = refs[mname]
        out, sec = models.denoise_clip(ref.path, noisy, "onnxruntime", s.threads)
        add(f"{mname}/zero-shot", out, _ours(ref, "zero-shot", sec, t_len, w, h))
    rec_noisy, rec_clean = clip.recorded
    for mname in [m for m in s.adapt_models if m in refs]:
        ref = refs[mname]
        for variant in ("fine-tuned", "supervised") if s.supervised else ("fine-tuned",):
            path = work / f"{clip.name}-{clip.condition}-{mname}-{variant}.pt"
            if variant == "fine-tuned":
                summ = models.fine_tune(ref.path, rec_noisy, path, s.ft_minutes, s.ft_steps, s.threads, s.seed)
            else:
                summ = models.supervised(ref.path, rec_noisy, rec_clean, path, s.ft_minutes, s.ft_steps, s.threads, s.seed)
            out, sec = models.denoise_clip(path, noisy, "onnxruntime", s.threads)
            entry = _ours(ref, variant, sec, t_len, w, h)
            entry["training"] = {k: summ.get(k) for k in ("steps", "seconds", "best_val", "loss_ema")}
            add(f"{mname}/{variant}", out, entry)
        log.info("  %s %s: zero-shot %.2f, fine-tuned %.2f, supervised %.2f dB", clip.name, mname,
                 methods.get(f"{mname}/zero-shot", {}).get("psnr", float("nan")),
                 methods[f"{mname}/fine-tuned"]["psnr"], methods.get(f"{mname}/supervised", {}).get("psnr", float("nan")))
    crops = cache / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(crops / f"{clip.name}-{clip.condition}.npz", **{k.replace("/", "__"): v for k, v in pic.items()})
    return run


def _ours(ref: models.ModelRef, variant: str, sec: float, n: int, w: int, h: int) -> dict:
    label = f"ours {ref.name} {variant}" + (" (UNTRAINED)" if ref.untrained else "")
    return {"kind": "ours", "label": label, "model": ref.name, "variant": variant, "untrained": ref.untrained,
            "seconds": round(sec, 3), "fps": n / sec, "fps_size": [w, h]}
