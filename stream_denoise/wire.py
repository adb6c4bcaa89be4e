"""The message format of published frames (version 1), its encoder and its strict decoder.

One frame is one ZeroMQ multipart message of exactly three parts::

    [topic: bytes, header: UTF-8 JSON object (<= 4 KiB), pixels: bytes]

``topic`` is the publisher's topic (default: the source name with any URL credentials removed);
subscribers filter on its prefix. ``header`` keys (all required, extra keys are ignored):

=============== ========================= =====================================================
key             type                      meaning
=============== ========================= =====================================================
``v``           int                       format version, ``1``
``seq``         int >= 0                  per-publisher, per-topic message counter, +1 per message;
                                          a jump means messages were lost on the way
``source``      str                       source name (credentials removed)
``index``       int >= 0                  the frame's per-source decode counter
``segment``     int >= 0                  increments on every source discontinuity
``pts``         number or null            presentation time in seconds (stream clock)
``captured_at`` number                    wall clock (``time.time()``) when the frame was decoded
``published_at`` number                   wall clock when the message was built
``width``       int 1..16384              image width
``height``      int 1..16384              image height
``channels``    int                       ``3``
``dtype``       str                       ``"uint8"``
``color``       str                       ``"BGR"`` (channel order of the decoded image)
``encoding``    str                       ``"raw"`` | ``"jpeg"`` | ``"png"``
``generation``  int >= 0                  the model generation that denoised the frame: 0 for the
                                          configured model; ``run --adapt`` adds 1 at each swap to
                                          an adapted model (optional for decoders: older
                                          publishers omit it)
=============== ========================= =====================================================

``pixels`` is, for ``raw``, exactly ``width * height * 3`` bytes of row-major BGR24 (what
``np.frombuffer(p, np.uint8).reshape(height, width, 3)`` and OpenCV expect); for ``jpeg`` and
``png``, the file bytes from ``cv2.imencode`` of the BGR image (8-bit, 3 channels).

The decoder trusts nothing: it checks the part count, the header size, JSON syntax, every key's
type and range, ``width * height <= max_pixels``, the raw payload length, and for jpeg/png the
magic bytes and the dimensions written *inside* the compressed stream, all before allocating
anything the header asks for. Any violation raises :class:`MessageError`.

``[publish] wire = "imagezmq"`` sends the two-part messages of imagezmq instead (:func:`encode_imagezmq`),
which an unmodified ``imagezmq.ImageHub(open_port=ENDPOINT, REQ_REP=False)`` receives.
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
from collections.abc import Sequence
from typing import Any, Final, Literal

import cv2
import numpy as np

from .errors import MessageError
from .frame import Frame

VERSION: Final = 1
MAX_HEADER_BYTES: Final = 4096
MAX_SIDE: Final = 16384
DEFAULT_MAX_PIXELS: Final = 7680 * 4320  # 8K UHD: ~100 MB raw
MAX_SOURCE_CHARS: Final = 512
ENCODINGS: Final = ("raw", "jpeg", "png")

Encoding = Literal["raw", "jpeg", "png"]
Part = bytes | bytearray | memoryview

_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_CREDENTIALS = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


def redact(source: str) -> str:
    """The source name safe to publish: ``rtsp://user:pass@host/x`` -> ``rtsp://host/x``, capped."""
    return _CREDENTIALS.sub(r"\1", source)[:MAX_SOURCE_CHARS]


def encode(
    frame: Frame,
    seq: int,
    encoding: Encoding = "raw",
    jpeg_quality: int = 90,
    *,
    topic: bytes | str | None = None,
    published_at: float | None = None,
) -> list[Part]:
    """The three parts of the message carrying ``frame`` (RGB) as BGR; the pixel part is not copied again."""
    header, payload = _header_and_payload(frame, seq, encoding, jpeg_quality, published_at)
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if len(head) > MAX_HEADER_BYTES:  # only reachable with absurd metadata; the decoder would reject it
        raise ValueError(f"header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    t = header["source"] if topic is None else topic
    return [t.encode() if isinstance(t, str) else bytes(t), head, payload]


def encode_imagezmq(
    frame: Frame,
    seq: int,
    encoding: Literal["raw", "jpeg"] = "raw",
    jpeg_quality: int = 90,
    *,
    topic: bytes | str | None = None,
    published_at: float | None = None,
) -> list[Part]:
    """The two parts imagezmq's ``ImageHub`` reads: ``[JSON metadata, pixels]``.

    ``raw``: metadata ``{"msg", "dtype": "uint8", "shape": [H, W, 3]}`` and the BGR24 array, what
    ``ImageHub.recv_image()`` returns as ``(msg, image)``; ``jpeg``: metadata ``{"msg"}`` and the JPEG
    file, what ``ImageHub.recv_jpg()`` returns. ``msg`` is the topic (default: the source name), as an
    imagezmq sender's name; the metadata also carries every key of this module's header (imagezmq
    ignores them; a plain pyzmq consumer gets ``seq``, ``index``, ``captured_at``...).
    """
    if encoding not in ("raw", "jpeg"):
        raise ValueError(f"imagezmq carries raw arrays or JPEG, not {encoding!r}")
    header, payload = _header_and_payload(frame, seq, encoding, jpeg_quality, published_at)
    t = header["source"] if topic is None else topic
    meta: dict[str, Any] = {**header, "msg": t.decode(errors="replace") if isinstance(t, bytes) else t}
    if encoding == "raw":
        meta.update(dtype="uint8", shape=[header["height"], header["width"], 3])
    return [json.dumps(meta, separators=(",", ":"), allow_nan=False).encode(), payload]


def _header_and_payload(
    frame: Frame, seq: int, encoding: str, jpeg_quality: int, published_at: float | None
) -> tuple[dict[str, Any], Part]:
    px = frame.pixels
    if not (isinstance(px, np.ndarray) and px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3):
        raise ValueError(f"frame pixels must be (H, W, 3) uint8, got {getattr(px, 'shape', '?')} {getattr(px, 'dtype', '?')}")
    h, w = px.shape[:2]
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        raise ValueError(f"frame size {w}x{h} outside 1..{MAX_SIDE}")
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r} (raw, jpeg, png)")
    bgr = cv2.cvtColor(np.ascontiguousarray(px), cv2.COLOR_RGB2BGR)
    payload: Part
    if encoding == "raw":
        payload = bgr.reshape(-1).data  # zero-copy view, format "B"
    else:
        if encoding == "jpeg":
            ext, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
        else:
            ext, params = ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]
        ok, buf = cv2.imencode(ext, bgr, params)
        if not ok:
            raise ValueError(f"cv2.imencode failed for {encoding}")
        payload = buf.reshape(-1).data
    header = {
        "v": VERSION,
        "seq": int(seq),
        "source": redact(frame.source),
        "index": int(frame.index),
        "segment": int(frame.segment),
        "pts": None if frame.pts is None else float(frame.pts),
        "captured_at": float(frame.captured_at),
        "published_at": time.time() if published_at is None else float(published_at),
        "width": w,
        "height": h,
        "channels": 3,
        "dtype": "uint8",
        "color": "BGR",
        "encoding": encoding,
        "generation": int(frame.generation),
    }
    return header, payload


def _reject_constant(name: str) -> Any:
    raise MessageError(f"header: {name} is not allowed")


def _int(h: dict[str, Any], key: str, lo: int = 0, hi: int | None = None) -> int:
    v = h.get(key)
    if type(v) is not int:
        raise MessageError(f"header: {key!r} must be an integer, got {type(v).__name__}")
    if v < lo or (hi is not None and v > hi):
        raise MessageError(f"header: {key!r}={v} outside {lo}..{hi if hi is not None else 'inf'}")
    return v


def _number(h: dict[str, Any], key: str, optional: bool = False) -> None:
    v = h.get(key)
    if v is None and optional and key in h:
        return
    if not (type(v) is int or (type(v) is float and math.isfinite(v))):
        raise MessageError(f"header: {key!r} must be a finite number{' or null' if optional else ''}")


def _str(h: dict[str, Any], key: str, allowed: Sequence[str] | None = None) -> str:
    v = h.get(key)
    if not isinstance(v, str):
        raise MessageError(f"header: {key!r} must be a string")
    if allowed is not None and v not in allowed:
        raise MessageError(f"header: {key!r}={v[:32]!r} not one of {', '.join(allowed)}")
    return v


def _buffer(part: Any, what: str) -> memoryview:
    try:
        mv = memoryview(part)  # bytes, bytearray, memoryview, numpy, zmq.Frame
    except TypeError:
        raise MessageError(f"{what} part is not a byte buffer ({type(part).__name__})") from None
    if mv.ndim == 1 and mv.format == "B":
        return mv
    try:
        return mv.cast("B")
    except TypeError:
        raise MessageError(f"{what} part is not a contiguous byte buffer") from None


def decode_header(parts: Sequence[Any], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, dict[str, Any]]:
    """Validate the part count and the header (cheap: no pixel work); return ``(topic, header)``."""
    if len(parts) != 3:
        raise MessageError(f"expected 3 message parts (topic, header, pixels), got {len(parts)}")
    topic = bytes(_buffer(parts[0], "topic"))
    raw = _buffer(parts[1], "header")
    if len(raw) > MAX_HEADER_BYTES:
        raise MessageError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        h = json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant)
    except MessageError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageError(f"header is not valid UTF-8 JSON: {str(exc)[:80]}") from None
    if not isinstance(h, dict):
        raise MessageError(f"header must be a JSON object, got {type(h).__name__}")
    if h.get("v") != VERSION or type(h.get("v")) is not int:
        raise MessageError(f"unsupported message version {str(h.get('v'))[:16]!r} (expected {VERSION})")
    for key in ("seq", "index", "segment"):
        _int(h, key)
    _str(h, "source")
    _number(h, "pts", optional=True)
    _number(h, "captured_at")
    _number(h, "published_at")
    w = _int(h, "width", 1, MAX_SIDE)
    ht = _int(h, "height", 1, MAX_SIDE)
    if w * ht > max_pixels:
        raise MessageError(f"image {w}x{ht} exceeds the limit of {max_pixels} pixels")
    _int(h, "channels", 3, 3)
    _str(h, "dtype", ("uint8",))
    _str(h, "color", ("BGR",))
    _str(h, "encoding", ENCODINGS)
    if "generation" in h:
        _int(h, "generation")
    return topic, h


def _png_info(buf: memoryview) -> tuple[int, int, int, int]:
    """(width, height, bit depth, color type) from the IHDR chunk."""
    if len(buf) < 33 or bytes(buf[:8]) != _PNG_MAGIC or bytes(buf[12:16]) != b"IHDR":
        raise MessageError("png payload has no PNG signature/IHDR")
    w, h, depth, ctype = struct.unpack(">IIBB", buf[16:26])
    return w, h, depth, ctype


def _jpeg_info(buf: memoryview) -> tuple[int, int, int, int]:
    """(width, height, precision, components) from the first SOF marker."""
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        raise MessageError("jpeg payload has no JPEG signature")
    i = 2
    while i + 1 < n:
        if buf[i] != 0xFF:
            raise MessageError("jpeg payload: bad marker")
        while i < n and buf[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = buf[i]
        i += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            continue  # markers without a length
        if marker in (0xD9, 0xDA) or i + 2 > n:
            break  # end of image / start of scan before any frame header
        length = (buf[i] << 8) | buf[i + 1]
        if length < 2:
            raise MessageError("jpeg payload: bad segment length")
        if marker in _JPEG_SOF:
            if length < 8 or i + 8 > n:
                break
            precision, h, w, comps = buf[i + 2], (buf[i + 3] << 8) | buf[i + 4], (buf[i + 5] << 8) | buf[i + 6], buf[i + 7]
            return w, h, precision, comps
        i += length
    raise MessageError("jpeg payload has no frame header")


def decode_image(header: dict[str, Any], payload: Any) -> np.ndarray:
    """The (H, W, 3) uint8 BGR image of a message whose header passed :func:`decode_header`."""
    w, h, enc = header["width"], header["height"], header["encoding"]
    buf = _buffer(payload, "pixels")
    expected = w * h * 3
    if enc == "raw":
        if len(buf) != expected:
            raise MessageError(f"raw payload is {len(buf)} bytes, header says {w}x{h}x3 = {expected}")
        return np.frombuffer(buf, np.uint8).reshape(h, w, 3).copy()  # own, writable memory
    if len(buf) > 2 * expected + 65536:
        raise MessageError(f"{enc} payload of {len(buf)} bytes is implausibly large for {w}x{h}")
    if enc == "png":
        pw, ph, depth, ctype = _png_info(buf)
        if (depth, ctype) != (8, 2):
            raise MessageError(f"png must be 8-bit RGB (got depth {depth}, color type {ctype})")
    else:
        pw, ph, depth, comps = _jpeg_info(buf)
        if (depth, comps) != (8, 3):
            raise MessageError(f"jpeg must be 8-bit, 3 components (got {depth}-bit, {comps})")
    if (pw, ph) != (w, h):
        raise MessageError(f"{enc} image is {pw}x{ph}, header says {w}x{h}")
    try:
        img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise MessageError(f"{enc} payload does not decode: {str(exc).strip()[:80]}") from None
    if img is None:
        raise MessageError(f"{enc} payload does not decode")
    if img.shape != (h, w, 3) or img.dtype != np.uint8:
        raise MessageError(f"{enc} image decoded to {img.shape} {img.dtype}, header says ({h}, {w}, 3) uint8")
    return img


def decode(parts: Sequence[Any], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[dict[str, Any], np.ndarray]:
    """``(header, image)`` of a received message; ``image`` is (H, W, 3) uint8 BGR. MessageError otherwise."""
    _, header = decode_header(parts, max_pixels)
    return header, decode_image(header, parts[2])
