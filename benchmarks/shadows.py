"""Where the shadow bias comes from: issue 24's "mean error where the clean value is below 32".

    python -m benchmarks.shadows [--conditions cctv,lowlight-iso6400] [--models base,lite] [--frames 20]

The quality benchmark reports one figure per clip x condition: the mean of output - clean over the
pixels whose clean value is below 32. This splits it, on the same frozen clips (the settings and
the oracle-tuned ``nlmeans`` of a quality result file, by default ``quality-zero-shot.json``), over
the last ``frames`` live frames:

- flat shadows: dark pixels inside dark areas with little detail (the clean frame blurred with
  sigma 4 px is below 32 and its local standard deviation there below 8 levels);
- shadows beside detail: every other dark pixel (dark hair, lettering, a dark edge next to a bright one);
- per clean level band (0-8, 8-16, 16-24, 24-32);
- what the method leaves dark: the mean of output - clean where the *output* is below 32, i.e.
  whether what a viewer sees as shadow is brighter than the truth.

Where the condition has a camera pipeline (Bayer mosaic + demosaicing, a codec), one more row runs
the clean clip through that pipeline with the sensor noise switched off (``noise_free``): the lift
a perfect denoiser that does not also undo the demosaicing and the codec would still show.

A lift confined to shadows beside detail, with flat shadows and the method's own dark pixels near 0,
is detail the input no longer carries (selection: a pixel chosen for being darker than its blurred
neighbourhood is estimated towards it), not a shifted black level.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from stream_denoise.noise import CONDITIONS, NoiseSpec, add_noise

from . import CACHE_DIR, RESULTS_DIR, clips, models, peers
from .metrics import DARK
from .report import machine_info

log = logging.getLogger(__name__)

BANDS = ((0, 8), (8, 16), (16, 24), (24, 32))
CONTEXT = 8  # frames before the scored ones given to the models (their windows reach 2-4 back)


def split(out: np.ndarray, clean: np.ndarray) -> dict:
    """The shadow bias of ``out`` against ``clean`` ((T, H, W, 3) uint8), split as the module says."""
    import cv2

    o, c = out.astype(np.float32).mean(axis=-1), clean.astype(np.float32).mean(axis=-1)
    err, dark = o - c, c < DARK
    blur = np.stack([cv2.GaussianBlur(f, (0, 0), 4) for f in c])
    std = np.sqrt(np.maximum(np.stack([cv2.GaussianBlur(f * f, (0, 0), 4) for f in c]) - blur**2, 0))
    flat = dark & (blur < DARK) & (std < 8)

    def mean(m: np.ndarray) -> float | None:
        return round(float(err[m].mean()), 2) if m.any() else None

    return {"dark": mean(dark), "dark_share": round(float(dark.mean()), 4),
            "flat": mean(flat), "flat_share": round(float(flat.mean()), 4),
            "beside_detail": mean(dark & ~flat),
            "bands": {f"{lo}-{hi}": mean((c >= lo) & (c < hi)) for lo, hi in BANDS},
            "left_dark": mean(o < DARK), "left_dark_share": round(float((o < DARK).mean()), 4)}


def noise_free(spec: NoiseSpec) -> NoiseSpec | None:
    """``spec``'s camera pipeline without its sensor noise (10⁹ photons at white, no read noise: shot
    noise below 0.01 level); None where nothing but noise remains (Gaussian or no mosaic and no codec)."""
    if spec.kind != "camera" or not (spec.mosaic or spec.codec):
        return None
    return replace(spec, photons=1e9, read_noise=0.0)


def live_tails(source: dict, conditions: list[str], frames: int) -> Iterator[tuple[dict, clips.NoisyClip, int, int]]:
    """For each of the source's runs under ``conditions``: the run, its frozen clip, where its last
    ``frames`` live frames start (in ``clip.live``), and how many frames before them the models get
    as context (their windows reach that far back)."""
    st = source["settings"]
    for run in source["runs"]:
        if run["condition"] not in conditions:
            continue
        clip = clips.make(run["clip"], run["condition"], st["frames"], tuple(st["crop"]) if st.get("crop") else None,
                          CACHE_DIR, recorded=st.get("recorded"))
        n = len(clip.live[1])
        start = n - min(frames, n)
        yield run, clip, start, min(start, CONTEXT)


def tail_args(p: argparse.ArgumentParser, conditions: str, models: str, out: str) -> None:
    """The options of a benchmark over the last live frames of a quality result file's clips."""
    p.add_argument("--source", type=Path, default=RESULTS_DIR / "quality-zero-shot.json",
                   help="quality result file whose clips and settings (and nlmeans setting) are used")
    p.add_argument("--conditions", default=conditions)
    p.add_argument("--models", default=models)
    p.add_argument("--frames", type=int, default=20, help="last live frames scored")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / out)


def read_source(prog: str, path: Path) -> dict | None:
    """A quality result file, or None after one line on stderr."""
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        print(f"{prog}: cannot read {path}: {exc}", file=sys.stderr)
        return None


def write_result(path: Path, result: dict) -> None:
    """``result`` as JSON at ``path``, written under a temporary name and renamed when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)
    log.info("wrote %s", path)


def run(source: dict, conditions: list[str], model_names: list[str], frames: int, threads: int) -> list[dict]:
    refs, _ = models.resolve_many(model_names, CACHE_DIR)
    rows = []
    for r, clip, start, ctx in live_tails(source, conditions, frames):
        noisy, clean = clip.live
        row = {"clip": r["clip"], "condition": r["condition"], "frames": len(clean) - start,
               "methods": {"noisy input": split(noisy[start:], clean[start:])}}
        pipeline = noise_free(CONDITIONS[r["condition"]])
        if pipeline is not None:  # the same seed as the frozen clip: the same codec rate control path
            full = add_noise(clip.clean, pipeline, clip.seed)
            row["methods"]["pipeline, no noise"] = split(full[clip.split:][start:], clean[start:])
        nl = r["methods"].get("nlmeans", {})
        if "params" in nl:  # the source run's oracle-tuned setting (a per-frame filter: the scored frames suffice)
            out, _ = peers.PEERS["nlmeans"].timed(noisy[start:], nl["params"], clip.sigma, threads)
            row["methods"]["nlmeans " + ", ".join(f"{k}={v}" for k, v in nl["params"].items())] = split(out, clean[start:])
        for name, ref in refs.items():
            out, _ = models.denoise_clip(ref.path, noisy[start - ctx:], "onnxruntime", threads)
            row["methods"][f"{name} zero-shot"] = split(out[ctx:], clean[start:])
        log.info("shadows %s/%s: %s", r["clip"], r["condition"],
                 ", ".join(f"{k} {v['dark']:+.2f} (flat {v['flat']}, beside detail {v['beside_detail']:+.2f}, "
                           f"left dark {v['left_dark']})" for k, v in row["methods"].items()))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shadows", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    tail_args(p, conditions="cctv,lowlight-iso6400", models="base,lite", out="shadows.json")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = read_source("shadows", a.source)
    if source is None:
        return 2
    t0 = time.monotonic()
    rows = run(source, a.conditions.split(","), [m for m in a.models.split(",") if m], a.frames, a.threads)
    if not rows:
        print(f"shadows: {a.source} has no run of {a.conditions}", file=sys.stderr)
        return 2
    result = {"meta": {**machine_info(), "command": " ".join(["python -m benchmarks.shadows", *(argv or sys.argv[1:])]),
                       "source": a.source.name, "source_commit": source["meta"].get("commit"),
                       "seconds": round(time.monotonic() - t0, 1)}, "runs": rows}
    write_result(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
