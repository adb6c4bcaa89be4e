"""Export a ``.pt`` model to ONNX (opset 17): input ``frames`` (N, 3K + P, H, W) float (the window,
then P noise maps for a noise-aware network), output ``clean``.

The ONNX file carries the window in ``metadata_props`` (frames, target, stride, noise_planes, window,
arch) so the runtime needs no torch to use it. Height/width/batch are dynamic; H and W must be
multiples of stride.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Literal


log = logging.getLogger(__name__)

OPSET = 17
INPUT, OUTPUT = "frames", "clean"


def export_onnx(model_path: str | Path, out: str | Path, precision: Literal["fp32", "fp16"] = "fp32",
                sample_hw: tuple[int, int] = (64, 96)) -> Path:
    """Write an ONNX file of the model at ``model_path`` (.pt). fp16: weights and I/O in half
    precision (what TensorRT 11's strongly typed builder needs for an fp16 engine)."""
    import onnx
    import torch

    from ..model import load_model

    model = load_model(model_path)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    model = model.to(dtype)
    x = torch.rand(1, model.in_channels, *sample_hw, dtype=dtype)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    axes = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(model, (x,), str(tmp), opset_version=OPSET, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: axes, OUTPUT: axes}, dynamo=False)
    proto = onnx.load(str(tmp))
    meta = {"frames": model.frames, "target": model.target, "stride": model.stride,
            "noise_planes": model.arch.noise_planes,
            "window": "causal" if model.target == model.frames - 1 else "centered",
            "arch": json.dumps(model.config()["arch"]), "precision": precision,
            "macs_per_pixel": model.macs_per_pixel(), "source": Path(model_path).name}
    if model.map_curve is not None:  # the input contract's map curve (``noise_level.MapCurve``)
        meta["map_curve"] = model.map_curve.to_meta()
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=str(v))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    log.info("exported %s -> %s (%s, opset %d)", model_path, out, precision, OPSET)
    return out

