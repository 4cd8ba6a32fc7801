"""Requests whose client is gone never reach the model: at the queue, in the service, through the app."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from app.backends.base import ModelEntry
from app.backends.registry import Registry
from app.config import load_settings
from app.errors import Cancelled
from app.scheduler import DeviceQueue, wait_idle
from app.service import Job, UpscaleService
from tests.conftest import ClientFactory
from tests.support.images import gradient_image, png_bytes
from tests.support.stubs import StubRunner, add_stub

PNG = png_bytes(gradient_image(40, 30))


def test_device_queue_drops_a_cancelled_job_before_it_runs() -> None:
    async def scenario() -> tuple[list[str], BaseException | None]:
        queue = DeviceQueue("cpu", queue_size=4)
        gate, started, ran = threading.Event(), threading.Event(), []

        def first(cancel: threading.Event) -> str:
            started.set()
            gate.wait(10)
            ran.append("first")
            return "first"

        def second(cancel: threading.Event) -> str:
            ran.append("second")
            return "second"

        running = asyncio.create_task(queue.run(first, timeout_s=30))
        await asyncio.to_thread(started.wait, 10)
        cancel = threading.Event()
        waiting = asyncio.create_task(queue.run(second, timeout_s=30, cancel=cancel))
        await asyncio.sleep(0)  # queued behind `first`
        assert queue.in_flight == 2 and queue.waiting == 1
        cancel.set()  # its client left while it waited
        assert queue.cancelled == 1
        gate.set()
        assert await running == "first"
        error = None
        try:
            await waiting
        except Cancelled as exc:
            error = exc
        assert await wait_idle([queue], 10)
        queue.shutdown()
        return ran, error

    ran, error = asyncio.run(scenario())
    assert ran == ["first"] and isinstance(error, Cancelled)


def test_device_queue_refuses_an_already_cancelled_job() -> None:
    async def scenario() -> int:
        queue = DeviceQueue("cpu", queue_size=4)
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(Cancelled):
            await queue.run(lambda c: pytest.fail("ran"), timeout_s=30, cancel=cancel)
        queue.shutdown()
        return queue.in_flight

    assert asyncio.run(scenario()) == 0


def test_device_queue_shutdown_stops_running_work() -> None:
    async def scenario() -> bool:
        queue = DeviceQueue("cpu", queue_size=4)
        started, seen = threading.Event(), threading.Event()

        def work(cancel: threading.Event) -> None:
            started.set()
            if cancel.wait(10):  # as run_model does between tiles
                seen.set()

        task = asyncio.create_task(queue.run(work, timeout_s=30))
        await asyncio.to_thread(started.wait, 10)
        assert not await wait_idle([queue], 0.05)  # busy: gives up after the grace period
        queue.shutdown()
        await task
        return seen.is_set()

    assert asyncio.run(scenario())


def test_service_upscale_with_cancel_set_never_calls_the_runner(tmp_path: Path) -> None:
    runner = StubRunner(scale=2)
    registry = Registry([])
    registry.models.append(ModelEntry(name="stub", backend="pytorch", file=Path("stub.pth"), runner=runner))
    service = UpscaleService(load_settings({"UPSCALER_WEIGHTS_DIR": str(tmp_path)}), registry, {})
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        asyncio.run(service.upscale(Job(PNG), cancel=cancel))
    assert runner.calls == 0
    assert asyncio.run(service.upscale(Job(PNG))).upscaler == "stub" and runner.calls == 1
    for queue in service.queues.values():
        queue.shutdown()


def raw_upscale(client: TestClient, leave: threading.Event) -> concurrent.futures.Future[list[dict]]:
    """POST /upscale straight into the app on the client's event loop, from a client that sends the
    whole body and then disconnects once `leave` is set. Returns the future of the ASGI messages sent."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/upscale",
        "raw_path": b"/upscale",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"image/png"), (b"content-length", str(len(PNG)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }

    async def call() -> list[dict]:
        body_sent, sent = False, []

        async def receive() -> dict:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": PNG, "more_body": False}
            while not leave.is_set():
                await anyio.sleep(0.01)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        await client.app(scope, receive, send)  # type: ignore[arg-type]
        return sent

    assert client.portal is not None
    return client.portal.start_task_soon(call)


def status_of(messages: list[dict]) -> int:
    return next(m["status"] for m in messages if m["type"] == "http.response.start")


def wait_for(predicate: Any, what: str) -> None:
    done = threading.Event()
    for _ in range(1000):
        if predicate():
            return
        done.wait(0.01)
    pytest.fail(f"timed out waiting for {what}")


def test_upscale_client_gone_while_queued_never_reaches_the_model(make_client: ClientFactory) -> None:
    client = make_client()
    gate = threading.Event()
    runner = add_stub(client, "slow", gate=gate)
    first: list = []
    worker = threading.Thread(
        target=lambda: first.append(client.post("/upscale", files={"image": ("a.png", PNG, "image/png")}))
    )
    worker.start()
    assert runner.started.wait(10)
    queues = client.app.state.upscaler.service.queues  # type: ignore[attr-defined]
    leave = threading.Event()
    second = raw_upscale(client, leave)
    wait_for(lambda: queues["cpu"].in_flight == 2, "the second request to wait in the queue")
    leave.set()
    wait_for(lambda: queues["cpu"].cancelled == 1, "the disconnect to cancel the queued job")
    gate.set()
    worker.join(30)
    assert first[0].status_code == 200
    assert status_of(second.result(30)) == 499
    assert runner.calls == 1  # only the first request reached the model


def test_upscale_client_gone_before_queueing_is_never_queued(make_client: ClientFactory) -> None:
    client = make_client()
    runner = add_stub(client, "stub")
    leave = threading.Event()
    leave.set()  # disconnects right after sending the body
    assert status_of(raw_upscale(client, leave).result(30)) == 499
    queues = client.app.state.upscaler.service.queues  # type: ignore[attr-defined]
    assert runner.calls == 0 and all(q.submitted == 0 for q in queues.values())
    assert client.post("/upscale", files={"image": ("a.png", PNG, "image/png")}).status_code == 200
