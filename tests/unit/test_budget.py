"""The process-wide memory budget and the per-step deadlines of a request."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from app.errors import ImageTooLarge, Overloaded
from app.memory import MemoryBudget


async def _hold(budget: MemoryBudget, need: int, release: asyncio.Event, got: list[str], name: str) -> None:
    async with budget.reserve(need, time.monotonic() + 5, name):
        got.append(name)
        await release.wait()


def test_budget_waits_then_admits_and_refuses_beyond_its_waiting_room() -> None:
    async def scenario() -> tuple[list[str], str, int]:
        budget = MemoryBudget(total=100, max_waiting=1)
        release, got = asyncio.Event(), list[str]()
        first = asyncio.create_task(_hold(budget, 70, release, got, "a"))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(_hold(budget, 60, asyncio.Event(), got, "b"))  # waits: 70 + 60 > 100
        await asyncio.sleep(0.01)
        assert (got, budget.reserved, budget.waiting) == (["a"], 70, 1)
        with pytest.raises(Overloaded) as info:  # a third does not fit and the waiting room is full
            async with budget.reserve(40, time.monotonic() + 5, "c"):
                pass
        retry = info.value.headers["Retry-After"]
        release.set()
        await first
        await asyncio.sleep(0.01)
        assert budget.reserved == 60  # b holds its share now
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second
        return got, retry, budget.reserved

    got, retry, reserved = asyncio.run(scenario())
    assert got == ["a", "b"] and int(retry) >= 1 and reserved == 0


def test_budget_refuses_more_than_the_whole_budget_and_times_out_waiting() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(total=100, max_waiting=4)
        with pytest.raises(ImageTooLarge, match="UPSCALER_MEMORY_BUDGET_MB"):
            async with budget.reserve(101, time.monotonic() + 5, "huge"):
                pass
        release = asyncio.Event()
        holder = asyncio.create_task(_hold(budget, 90, release, [], "a"))
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(Overloaded, match="deadline"):
            async with budget.reserve(20, time.monotonic() + 0.1, "late"):
                pass
        assert time.monotonic() - t0 < 2 and budget.waiting == 0
        release.set()
        await holder
        assert budget.reserved == 0

    asyncio.run(scenario())


def test_budget_keeps_the_memory_of_abandoned_work_until_it_ends() -> None:
    async def scenario() -> list[int]:
        budget = MemoryBudget(total=100, max_waiting=1)
        seen = []
        work = asyncio.ensure_future(asyncio.sleep(0.2))
        async with budget.reserve(80, time.monotonic() + 5, "a") as held:
            held.outlive(work)  # a step that timed out is still running
        seen.append(budget.reserved)
        await work
        await asyncio.sleep(0.05)
        seen.append(budget.reserved)
        return seen

    assert asyncio.run(scenario()) == [80, 0]


def test_budget_calls_on_idle_once_nothing_is_reserved_for_a_while() -> None:
    async def scenario() -> list[str]:
        calls: list[str] = []
        budget = MemoryBudget(total=100, max_waiting=1, on_idle=lambda: calls.append("idle"), idle_s=0.2)
        async with budget.reserve(10, time.monotonic() + 5, "a"):
            await asyncio.sleep(0.3)
        async with budget.reserve(10, time.monotonic() + 5, "b"):  # a's idle timer is off...
            await asyncio.sleep(0.4)  # ...so nothing runs while b holds memory, past a's idle_s
            assert calls == []
        for _ in range(100):  # then once, idle_s after b gave its memory back
            await asyncio.sleep(0.05)
            if calls:
                break
        await asyncio.sleep(0.3)
        return calls

    assert asyncio.run(scenario()) == ["idle"]
