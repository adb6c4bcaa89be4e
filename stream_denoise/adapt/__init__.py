"""Live self-adaptation (``run --adapt``): the running denoiser learns its camera while it streams.

``reservoir`` keeps a bounded rolling sample of the input (short clips spread over time, the
newest held out); ``trainer`` fine-tunes candidates in a separate, niced process with the
``fine-tune`` objective and scores them on the held-out clips; ``store`` keeps accepted models per
camera across restarts; ``adapter`` ties them to the pipeline and hot-swaps ONNX Runtime sessions
between two frames. Configured by ``[adapt]`` (``config.AdaptConfig``).
"""

from .adapter import Adapter

__all__ = ["Adapter"]
