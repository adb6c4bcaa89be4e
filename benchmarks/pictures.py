"""Pictures next to the results: side-by-side crops per condition and a PSNR-vs-fps scatter plot."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def make_all(results: Path, cache: Path) -> list[Path]:
    out = []
    q = results / "quality.json"
    if q.exists():
        out += crops(json.loads(q.read_text()), results, cache)
    out += [p for p in [scatter(results)] if p is not None]
    return out


def _columns(runs: list[dict]) -> list[str]:
    """noisy, the two best peers (mean PSNR on the common subset), ours zero-shot / fine-tuned / supervised."""
    peer_psnr: dict[str, list[float]] = {}
    for r in runs:
        for k, m in r["methods"].items():
            if m.get("kind") == "peer" and "psnr_subset" in m:
                peer_psnr.setdefault(k, []).append(m["psnr_subset"])
    best = sorted(peer_psnr, key=lambda k: -float(np.mean(peer_psnr[k])))[:2]
    ours = [k for k in runs[0]["methods"] if runs[0]["methods"][k].get("kind") == "ours"]
    adapted = {k.split("/")[0] for k in ours if not k.endswith("zero-shot")}
    first = next(iter(adapted), None) or (ours[0].split("/")[0] if ours else None)
    ours = [k for k in ours if k.split("/")[0] == first]
    return ["noisy", *best, *ours]


def crops(q: dict, results: Path, cache: Path) -> list[Path]:
    """One PNG per condition: a row per clip, a column per method, PSNR of the crop in the title."""
    from .metrics import psnr

    plt = _plt()
    written = []
    conds = list(dict.fromkeys(r["condition"] for r in q["runs"]))
    for cond in conds:
        runs = [r for r in q["runs"] if r["condition"] == cond]
        files = [(r, cache / "crops" / f"{r['clip']}-{cond}.npz") for r in runs]
        rows = [(r, np.load(f)) for r, f in files if f.exists()]
        if not rows:
            continue
        cols = [*_columns(runs), "clean"]
        fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.2 * len(cols), 2.4 * len(rows)), squeeze=False)
        for i, (r, z) in enumerate(rows):
            clean = z["clean"]
            for j, k in enumerate(cols):
                ax = axes[i][j]
                ax.axis("off")
                key = k.replace("/", "__")
                if key not in z:
                    continue
                img = z[key]
                label = "clean" if k == "clean" else r["methods"][k]["label"]
                title = label if k == "clean" else f"{label}\n{psnr(img, clean):.2f} dB"
                ax.imshow(img, interpolation="nearest")
                ax.set_title(f"{r['clip']}: {title}" if j == 0 else title, fontsize=7)
        fig.suptitle(f"{cond} (crop of one live frame)", fontsize=9)
        fig.tight_layout()
        path = results / f"crops-{cond}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def scatter(results: Path) -> Path | None:
    """Mean PSNR on the common subset (all clips and conditions) against fps at the first speed resolution."""
    qp, sp = results / "quality.json", results / "speed.json"
    if not qp.exists():
        return None
    q = json.loads(qp.read_text())
    s = json.loads(sp.read_text()) if sp.exists() else None
    psnrs: dict[str, list[float]] = {}
    labels: dict[str, str] = {}
    for r in q["runs"]:
        for k, m in r["methods"].items():
            if "psnr_subset" in m:
                psnrs.setdefault(k, []).append(m["psnr_subset"])
                labels[k] = m["label"]
    fps, size = _fps(q, s)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, vals in psnrs.items():
        f = fps.get(k) or fps.get(k.split("/")[0])
        if k == "noisy":
            ax.axhline(float(np.mean(vals)), color="grey", ls="--", lw=0.8, label="noisy input")
            continue
        if f is None:
            continue
        marker = "o" if "/" not in k else {"zero-shot": "s", "fine-tuned": "^", "supervised": "v"}.get(k.split("/")[1], "s")
        ax.scatter([f], [np.mean(vals)], marker=marker, label=labels[k])
    ax.set_xscale("log")
    ax.set_xlabel(f"fps at {size} on this machine (log)")
    ax.set_ylabel("PSNR (dB), mean over clips and conditions")
    ax.axvline(25, color="k", lw=0.5, ls=":")
    ax.text(25, ax.get_ylim()[0], " 25 fps", fontsize=7, va="bottom")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = results / "psnr_vs_fps.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fps(q: dict, s: dict | None) -> tuple[dict[str, float], str]:
    """fps per method key (our variants share their model's): from speed.json at its first resolution
    (onnxruntime end to end; BM4D extrapolated by pixel count), else from the quality run."""
    out: dict[str, float] = {}
    if s and s["runs"]:
        w, h = s["runs"][0]["resolution"]
        for r in s["runs"]:
            if r["resolution"] == [w, h] and r["backend"] == "onnxruntime":
                out[r["model"]] = r["fps"]
        for p in s["peers"]:
            if p["resolution"] == [w, h] and "fps" in p:
                out[p["peer"]] = p["fps"]
        for r in q["runs"]:
            m = r["methods"].get("bm4d", {})
            if "fps" in m:
                out["bm4d"] = m["fps"] * m["fps_size"][0] * m["fps_size"][1] / (w * h)
        return out, f"{w}x{h} (BM4D extrapolated by pixel count)"
    for r in q["runs"]:
        for k, m in r["methods"].items():
            if "fps" in m:
                out.setdefault(k, m["fps"])
    return out, "the quality clips' size"
