"""/metrics is Prometheus' own exposition (prometheus_client): types, help, ``_total`` counters and
values that keep every digit; /healthz follows the last published frame. Real HTTP on localhost."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_denoise.health import HealthServer
from stream_denoise.metrics import Metrics


def scrape(snapshot) -> tuple[str, dict]:  # type: ignore[no-untyped-def]
    server = HealthServer(0, snapshot)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read().decode()
    finally:
        server.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return text, families


def value(families: dict, name: str, **labels: str) -> float:
    for family in families.values():
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise KeyError(name, labels)


@pytest.mark.parametrize("n", [1, 999_999, 1_000_001, 9_999_999, 10_000_000, 10_000_001, 123_456_789])
def test_counters_count_exactly_past_ten_million(n: int) -> None:
    m = Metrics()
    m.frames_in, m.frames_out, m.dropped_queue = n, n - 1, n // 3
    _, families = scrape(m.snapshot)
    assert value(families, "stream_denoise_frames_in_total") == n
    assert value(families, "stream_denoise_frames_out_total") == n - 1
    assert value(families, "stream_denoise_dropped_queue_total") == n // 3
    assert families["stream_denoise_frames_in"].type == "counter"  # the parser names a counter family without _total


def test_timestamps_keep_their_milliseconds_and_every_line_has_type_and_help() -> None:
    m = Metrics()
    m.last_output_at = 1_796_400_123.456
    m.latency["infer"].add(0.0123)
    text, families = scrape(lambda: {**m.snapshot(), "camera": {"gate": {**m.snapshot(), "up": 1}}})
    assert value(families, "stream_denoise_last_output_timestamp_seconds") == 1_796_400_123.456
    assert families["stream_denoise_last_output_timestamp_seconds"].type == "gauge"
    assert value(families, "stream_denoise_latency_seconds", stage="infer", quantile="0.99") == pytest.approx(0.0123)
    assert value(families, "stream_denoise_camera_up", camera="gate") == 1
    assert value(families, "stream_denoise_camera_frames_out_total", camera="gate") == 0
    for name, family in families.items():
        assert family.documentation and family.documentation != "(undocumented)", name
        assert f"# TYPE {name}" in text
    assert all(f.name.startswith("stream_denoise_") for f in families.values())


def test_healthz_follows_the_last_frame() -> None:
    m = Metrics()
    server = HealthServer(0, m.snapshot, stale_after_s=0.5)
    url = f"http://127.0.0.1:{server.port}/healthz"
    try:
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url, timeout=5)
        m.frames_out, m.last_output_at = 1, time.time()
        assert urllib.request.urlopen(url, timeout=5).read() == b"ok"
        time.sleep(0.6)
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url, timeout=5)
    finally:
        server.close()
