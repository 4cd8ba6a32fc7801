"""Responses are read only after their status is checked; /metrics read through Prometheus' parser."""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

R = TypeVar("R")


def ok(resp: R, status: int = 200) -> R:
    """`resp` once its status code is `status` (the body is shown when it is not)."""
    code: Any = getattr(resp, "status_code", None)
    assert code == status, f"status {code}, expected {status}: {getattr(resp, 'text', '')[:500]}"
    return resp


def server_timing(resp: Any) -> dict[str, float]:
    """The answer's Server-Timing entries as {stage: ms}, in order."""
    entries = [e.strip().split(";dur=") for e in resp.headers["server-timing"].split(",")]
    return {name: float(ms) for name, ms in entries}


def scrape(client: Any) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of every sample /metrics exposes (`client`: a TestClient, or an
    httpx client with the server's base_url)."""
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
