"""The wire format: encode/decode round trips and a decoder that rejects anything malformed."""

from __future__ import annotations

import json
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stream_denoise.errors import MessageError
from stream_denoise.frame import Frame
from stream_denoise.wire import DEFAULT_MAX_PIXELS, MAX_HEADER_BYTES, decode, decode_header, encode, redact


def make_frame(w: int = 33, h: int = 17, index: int = 7, source: str = "cam") -> Frame:
    px = np.random.default_rng(index).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Frame(px, index, 1.25, 1700000000.5, source, segment=2)


def header(**over: Any) -> dict[str, Any]:
    h: dict[str, Any] = {
        "v": 1, "seq": 0, "source": "cam", "index": 0, "segment": 0, "pts": None, "captured_at": 1.0,
        "published_at": 2.0, "width": 4, "height": 2, "channels": 3, "dtype": "uint8", "color": "BGR",
        "encoding": "raw",
    }
    h.update(over)
    return {k: v for k, v in h.items() if v is not ...}


def msg(h: dict[str, Any], payload: bytes | None = None) -> list[bytes]:
    if payload is None:
        payload = bytes(24)  # right for the default 4x2
    return [b"t", json.dumps(h).encode(), payload]


def compressed(img: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


# -- round trips -------------------------------------------------------------------------------

def test_raw_round_trip_is_exact_bgr() -> None:
    f = make_frame()
    parts = encode(f, 41, "raw", topic="topic")
    assert bytes(parts[0]) == b"topic" and len(parts) == 3
    h, img = decode(parts)
    assert np.array_equal(img, cv2.cvtColor(f.pixels, cv2.COLOR_RGB2BGR))
    assert img.flags.writeable and img.dtype == np.uint8
    assert h["seq"] == 41 and h["index"] == 7 and h["segment"] == 2 and h["pts"] == 1.25
    assert h["captured_at"] == 1700000000.5 and h["published_at"] >= h["captured_at"]
    assert (h["width"], h["height"], h["channels"], h["dtype"], h["color"], h["encoding"]) == (33, 17, 3, "uint8", "BGR", "raw")
    assert h["v"] == 1 and h["source"] == "cam"


def test_png_round_trip_is_exact_and_jpeg_close() -> None:
    f = make_frame(w=40, h=24)
    bgr = cv2.cvtColor(f.pixels, cv2.COLOR_RGB2BGR)
    _, img = decode(encode(f, 0, "png"))
    assert np.array_equal(img, bgr)
    smooth = f.with_pixels(np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (24, 1, 3)))
    h, img = decode(encode(smooth, 0, "jpeg", jpeg_quality=95))
    assert h["encoding"] == "jpeg" and img.shape == (24, 40, 3)
    assert np.abs(img.astype(int) - smooth.pixels[..., ::-1].astype(int)).mean() < 3


def test_decode_accepts_any_byte_buffers() -> None:
    parts = encode(make_frame(), 1)
    h, img = decode([bytearray(parts[0]), memoryview(bytes(parts[1])), np.frombuffer(bytes(parts[2]), np.uint8)])
    assert img.shape == (17, 33, 3)


def test_default_topic_and_source_drop_credentials() -> None:
    parts = encode(make_frame(source="rtsp://admin:secret@10.0.0.2:554/live"), 0)
    assert parts[0] == b"rtsp://10.0.0.2:554/live"
    assert b"secret" not in bytes(parts[1])
    assert redact("cam-1") == "cam-1" and redact("rtsps://u@h/x") == "rtsps://h/x"


def test_encode_rejects_bad_pixels() -> None:
    f = make_frame()
    with pytest.raises(ValueError):
        encode(f.with_pixels(f.pixels.astype(np.float32)), 0)
    with pytest.raises(ValueError):
        encode(f.with_pixels(f.pixels[..., 0]), 0)
    with pytest.raises(ValueError):
        encode(f, 0, "webp")  # type: ignore[arg-type]


# -- strict decoder ----------------------------------------------------------------------------

def test_valid_handmade_message_decodes() -> None:
    h, img = decode(msg(header()))
    assert img.shape == (2, 4, 3)


@pytest.mark.parametrize(
    "parts, match",
    [
        ([b"t", json.dumps(header()).encode()], "3 message parts"),
        ([b"t", json.dumps(header()).encode(), bytes(24), b""], "3 message parts"),
        ([], "3 message parts"),
        ([b"t", b"{not json", bytes(24)], "JSON"),
        ([b"t", b"\xff\xfe", bytes(24)], "JSON"),
        ([b"t", b"[1, 2]", bytes(24)], "JSON object"),
        ([b"t", b"[" * 5000 + b"]" * 5000, bytes(24)], "exceeds"),
        ([b"t", b"[" * 2040 + b"]" * 2040, bytes(24)], "JSON"),  # RecursionError inside json
        ([b"t", json.dumps({**header(), "pad": "x" * MAX_HEADER_BYTES}).encode(), bytes(24)], "exceeds"),
        (msg(header(), bytes(23)), "raw payload is 23 bytes"),
        (msg(header(), bytes(25)), "raw payload is 25 bytes"),
        (msg(header(width=16385, height=1), b""), "width"),
        (msg(header(width=16384, height=16384), b""), "exceeds the limit"),
        (msg(header(width=0), b""), "width"),
        (msg(header(width=-3), b""), "width"),
        (msg(header(width=4.0)), "width"),
        (msg(header(height=True)), "height"),
        (msg(header(width="4")), "width"),
        (msg(header(v=2)), "version"),
        (msg(header(v=True)), "version"),
        (msg(header(seq=-1)), "seq"),
        (msg(header(seq=...)), "seq"),
        (msg(header(source=5)), "source"),
        (msg(header(pts="now")), "pts"),
        (msg(header(pts=...)), "pts"),
        (msg(header(captured_at=None)), "captured_at"),
        (msg(header(published_at=[1])), "published_at"),
        (msg(header(channels=4)), "channels"),
        (msg(header(dtype="uint16")), "dtype"),
        (msg(header(color="RGB")), "color"),
        (msg(header(encoding="webp")), "encoding"),
    ],
)
def test_malformed_messages_raise_message_error(parts: list[bytes], match: str) -> None:
    with pytest.raises(MessageError, match=match):
        decode(parts)


def test_nan_and_infinity_are_rejected() -> None:
    text = json.dumps(header()).replace('"captured_at": 1.0', '"captured_at": NaN').encode()
    with pytest.raises(MessageError, match="NaN"):
        decode([b"t", text, bytes(24)])
    with pytest.raises(MessageError):
        decode([b"t", json.dumps(header(pts=float("inf"))).encode(), bytes(24)])


def test_max_pixels_is_enforced_before_any_allocation() -> None:
    with pytest.raises(MessageError, match="limit"):
        decode(msg(header(width=100, height=100), b""), max_pixels=9999)
    # a header asking for 16384x2026 (~100 MB) with a tiny payload fails on the length check
    big = header(width=16384, height=DEFAULT_MAX_PIXELS // 16384)
    with pytest.raises(MessageError, match="raw payload"):
        decode(msg(big, b"x"))


def test_compressed_payload_must_match_header() -> None:
    img = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    jpg, png = compressed(img, ".jpg"), compressed(img, ".png")
    h, out = decode(msg(header(encoding="jpeg", width=8, height=8), jpg))
    assert out.shape == (8, 8, 3)
    h, out = decode(msg(header(encoding="png", width=8, height=8), png))
    assert np.array_equal(out, img)
    cases = [
        (header(encoding="jpeg", width=4000, height=4000), jpg, "implausibly large|8x8"),
        (header(encoding="jpeg", width=16, height=8), jpg, "8x8, header says 16x8"),
        (header(encoding="png", width=8, height=9), png, "8x8, header says 8x9"),
        (header(encoding="jpeg", width=8, height=8), png, "JPEG signature"),
        (header(encoding="png", width=8, height=8), jpg, "PNG signature"),
        (header(encoding="png", width=8, height=8), png[:40], "does not decode"),
        (header(encoding="png", width=8, height=8), compressed(img[..., 0].astype(np.uint16) * 200, ".png"), "8-bit RGB"),
        (header(encoding="jpeg", width=8, height=8), compressed(img[..., 0], ".jpg"), "3 components"),
        (header(encoding="png", width=8, height=8), b"", "PNG signature"),
    ]
    for h, payload, match in cases:
        with pytest.raises(MessageError, match=match):
            decode(msg(h, payload))


def test_decode_header_is_cheap_and_returns_topic() -> None:
    topic, h = decode_header([b"cam/1", json.dumps(header()).encode(), b""])
    assert topic == b"cam/1" and h["width"] == 4


# -- property: decode only ever returns a valid image or raises MessageError -------------------

_junk = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                  st.text(max_size=8), st.lists(st.integers(), max_size=2))


_KEYS = list(header())


@st.composite
def messages(draw: st.DrawFn) -> list[Any]:
    if draw(st.integers(0, 9)) == 0:  # pure noise
        return draw(st.lists(st.binary(max_size=64), max_size=5))
    w, h = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    hd = header(
        seq=draw(st.integers(0, 2**40)), source=draw(st.text(max_size=10)), index=draw(st.integers(0, 100)),
        segment=draw(st.integers(0, 3)), pts=draw(st.one_of(st.none(), st.floats(-1e6, 1e6))),
        captured_at=draw(st.floats(0, 2e9)), published_at=draw(st.floats(0, 2e9)), width=w, height=h,
        encoding=draw(st.sampled_from(["raw", "jpeg", "png"])),
    )
    for key in draw(st.lists(st.sampled_from(_KEYS), max_size=2)) if draw(st.integers(0, 2)) == 0 else []:  # corrupt fields
        value = draw(st.one_of(_junk, st.just(...)))
        hd = header(**{**hd, key: value})
    if draw(st.integers(0, 19)):
        head = json.dumps(hd).encode()
    else:
        head = draw(st.binary(max_size=40))
    natural = {"raw": "exact", "jpeg": "jpeg", "png": "png"}.get(str(hd.get("encoding")), "random")
    kind = draw(st.sampled_from([natural] * 4 + ["exact", "random", "jpeg", "png"]))
    if kind == "exact":
        payload = draw(st.binary(min_size=w * h * 3, max_size=w * h * 3))
    elif kind in ("jpeg", "png"):
        iw, ih = (w, h) if draw(st.integers(0, 3)) else (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
        img = np.frombuffer(draw(st.binary(min_size=iw * ih * 3, max_size=iw * ih * 3)), np.uint8).reshape(ih, iw, 3)
        payload = compressed(img, ".jpg" if kind == "jpeg" else ".png")
        if draw(st.integers(0, 3)) == 0:  # corrupt it
            cut = draw(st.integers(0, len(payload)))
            payload = payload[:cut] + draw(st.binary(max_size=8)) + payload[cut + 1:]
    else:
        payload = draw(st.binary(max_size=500))
    n = draw(st.sampled_from([3] * 8 + [0, 1, 2, 4]))
    return ([b"topic", head, payload] + [b""] * 3)[:n]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_decode_returns_valid_image_or_raises_message_error(parts: list[Any]) -> None:
    try:
        h, img = decode(parts)
    except MessageError:
        event("rejected")
        return
    event(f"decoded {h['encoding']}")
    assert isinstance(h, dict) and len(parts) == 3
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8
    assert img.shape == (h["height"], h["width"], 3)
    if h["encoding"] == "raw":
        assert img.tobytes() == bytes(parts[2])
