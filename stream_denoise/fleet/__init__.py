"""The multi-process streaming runtime of a multi-camera deployment (``run --config`` with ``[[cameras]]``).

::

    decode worker w (process): camera threads -> source -> frame copied into its ring (shared memory)
                                                              |
    inference process: lanes (threads, one CPU session each) take the newest frame of each camera,
                       round-robin -> its Denoiser (own temporal window) -> publish (one PUB socket)

Decoding scales with processes instead of sharing one interpreter with inference; frames cross
once, by the copy into the ring; a worker that dies is started again and its cameras go on; every
drop (newest wins, ring full) is counted per camera. ``[runtime] decode_workers = 0`` keeps the
one-process runtime (:mod:`stream_denoise.multicam`'s camera threads). :mod:`.exchange` carries a
window and its result through shared memory between a Ray camera actor and a replica on one host.
"""

from .decode import DecodeWorkers, default_workers
from .lanes import LaneRouted, Lanes, RingCamera
from .ring import FrameRing, RingSpec

__all__ = ["DecodeWorkers", "FrameRing", "LaneRouted", "Lanes", "RingCamera", "RingSpec", "default_workers"]
