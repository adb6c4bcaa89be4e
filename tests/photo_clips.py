"""Small clean test clips: a scikit-image photo panned, zoomed and turned smoothly (no layers, blur
or brightness changes, unlike training's ``train.synth``), so that fine-tuning's optical flow aligns
its frames well."""

from __future__ import annotations

import numpy as np


def moving_clip(image: np.ndarray, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic camera motion over a still photo: smooth random pan/zoom/rotation, (T,size,size,3)."""
    import cv2

    h, w = image.shape[:2]
    scale0 = max(size / min(h, w) * 1.15, 1.0)
    pos = np.array([w / 2, h / 2]) + rng.uniform(-0.1, 0.1, 2) * (w, h)
    vel = rng.normal(0, 2.0, 2)
    ang, dang = rng.uniform(-5, 5), rng.normal(0, 0.3)
    zoom, dzoom = 1.0, rng.normal(0, 0.004)
    out = []
    for _ in range(frames):
        m = cv2.getRotationMatrix2D((float(pos[0]), float(pos[1])), float(ang), float(scale0 * zoom))
        m[:, 2] += np.array([size / 2, size / 2]) - pos
        out.append(cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
        vel += rng.normal(0, 0.3, 2)
        pos += vel
        ang += dang
        zoom *= 1 + dzoom
    return np.stack(out)


def skimage_photos() -> list[np.ndarray]:
    """The colour photos shipped with scikit-image (RGB uint8)."""
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field",
             "retina", "immunohistochemistry", "colorwheel", "camera", "brick", "grass", "gravel"]
    photos = []
    for n in names:
        fn = getattr(data, n, None)
        if fn is None:
            continue
        img = np.asarray(fn() if n != "motorcycle_left" else data.stereo_motorcycle()[0])
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    return photos
