"""The Python client's logic against httpx's mock transport: typed results, error parsing, the API key,
and retries on 503 that honour Retry-After (and stop)."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx2 as httpx
import pytest
from upscaler_client import AsyncClient, Client, UpscalerError

RESULT_HEADERS = {
    "content-type": "image/png",
    "x-upscaler": "rrdb-x2",
    "x-upscale-backend": "pytorch",
    "x-input-size": "40x30",
    "x-output-size": "80x60",
    "x-processing-ms": "12.5",
    "server-timing": "budget;dur=0.0, decode;dur=1.5, queue;dur=0.1, model;dur=9.8, encode;dur=1.0",
}


def overloaded(retry_after: str = "0") -> httpx.Response:
    body = {"error": {"type": "overloaded", "message": "queue full"}}
    return httpx.Response(503, json=body, headers={"Retry-After": retry_after})


class Script:
    """Answers requests in order from a list, recording what was sent."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers.pop(0)


def test_client_upscale_reads_the_result_headers() -> None:
    script = Script(httpx.Response(200, content=b"PNG...", headers=RESULT_HEADERS))
    with Client("http://svc", api_key="k", transport=httpx.MockTransport(script)) as client:
        result = client.upscale(b"raw image bytes", scale=2, fallback=False, model=None)
    assert (result.image, result.upscaler, result.backend) == (b"PNG...", "rrdb-x2", "pytorch")
    assert (result.input_size, result.output_size, result.fallback_reason) == ((40, 30), (80, 60), None)
    assert result.timings == {"budget": 0.0, "decode": 1.5, "queue": 0.1, "model": 9.8, "encode": 1.0}
    sent = script.requests[0]
    assert sent.url.path == "/upscale" and sent.headers["authorization"] == "Bearer k"
    body = sent.content
    assert b'name="scale"\r\n\r\n2' in body and b'name="fallback"\r\n\r\nfalse' in body
    assert b'name="model"' not in body and b"raw image bytes" in body


def test_client_retries_503_after_retry_after_then_succeeds() -> None:
    script = Script(overloaded(), overloaded(), httpx.Response(200, content=b"x", headers=RESULT_HEADERS))
    with Client("http://svc", retries=3, transport=httpx.MockTransport(script)) as client:
        assert client.upscale(b"img").upscaler == "rrdb-x2"
    assert len(script.requests) == 3


def test_client_gives_up_after_its_retries_with_the_error() -> None:
    script = Script(*(overloaded() for _ in range(3)))
    client = Client("http://svc", retries=2, transport=httpx.MockTransport(script))
    with client, pytest.raises(UpscalerError) as info:
        client.upscale(b"img")
    assert (info.value.status, info.value.type, info.value.retry_after_s) == (503, "overloaded", 0.0)
    assert len(script.requests) == 3


def test_client_does_not_retry_client_errors() -> None:
    bad = httpx.Response(400, json={"error": {"type": "invalid_image", "message": "not an image"}})
    script = Script(bad)
    client = Client("http://svc", transport=httpx.MockTransport(script))
    with client, pytest.raises(UpscalerError, match="400 invalid_image: not an image"):
        client.upscale(b"junk")
    assert len(script.requests) == 1


def test_client_generate_and_health() -> None:
    png = b"\x89PNG fake"
    generate = {
        "images": [base64.b64encode(png).decode()],
        "info": {
            "upscaler": "lanczos",
            "backend": "pillow",
            "fallback_reason": "weights_missing",
            "input_size": [40, 30],
            "output_size": [80, 64],
        },
    }
    health = {
        "status": "ok",
        "ready": True,
        "default_model": "m",
        "models": [{"name": "m", "available": True}],
    }
    odd = 'decode;desc="x";dur=2.5, cache, model;dur=oops, encode;dur=1'  # other servers' shapes
    script = Script(
        httpx.Response(200, json=generate, headers={"server-timing": odd}), httpx.Response(200, json=health)
    )
    with Client("http://svc", transport=httpx.MockTransport(script)) as client:
        result = client.generate([b"a"], hr_scale=2.0, prompt="cat")
        state = client.health()
    assert result.images == [png] and result.fallback_reason == "weights_missing"
    assert result.output_size == (80, 64) and result.timings == {"decode": 2.5, "encode": 1.0}
    sent = json.loads(script.requests[0].content)
    assert sent["images"] == [base64.b64encode(b"a").decode()] and sent["prompt"] == "cat"
    assert state.ready and state.serving == ["m"]


def test_client_generate_refuses_an_answer_that_is_not_base64() -> None:
    good = base64.b64encode(b"\x89PNG fake").decode()
    for bad in (good[:4] + "*" + good[4:], good[:-1]):  # a stray character; a truncated answer
        script = Script(httpx.Response(200, json={"images": [bad], "info": {}}))
        with Client("http://svc", transport=httpx.MockTransport(script)) as client, pytest.raises(ValueError):
            client.generate(b"a")


def test_async_client_retries_and_reads_results() -> None:
    script = Script(overloaded(), httpx.Response(200, content=b"x", headers=RESULT_HEADERS))

    async def run() -> str:
        async with AsyncClient("http://svc", transport=httpx.MockTransport(script)) as client:
            return (await client.upscale(b"img", width=80)).upscaler

    assert asyncio.run(run()) == "rrdb-x2" and len(script.requests) == 2
