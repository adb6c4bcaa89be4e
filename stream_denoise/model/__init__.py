"""The video denoising network (PyTorch). Importing this package imports torch."""

from .checkpoint import load_model, save_model
from .net import ARCHS, STRIDE, VideoDenoiser, create_model

__all__ = ["ARCHS", "STRIDE", "VideoDenoiser", "create_model", "load_model", "save_model"]
