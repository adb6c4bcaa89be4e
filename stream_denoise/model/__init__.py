"""The video denoising network (PyTorch). Importing this package imports torch."""

from .checkpoint import load_model, save_model
from ..noise_level import MapCurve
from .net import ARCHS, STRIDE, VideoDenoiser, create_model

__all__ = ["ARCHS", "STRIDE", "MapCurve", "VideoDenoiser", "create_model", "load_model", "save_model"]
