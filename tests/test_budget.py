"""The byte budget of messages being accepted (beep_mail/budget.py), on a real loop."""

from __future__ import annotations

import asyncio

import pytest

from beep_mail.budget import ByteBudget

pytestmark = pytest.mark.asyncio


async def _enter(budget: ByteBudget, size: int, log: list[str], name: str,
                 leave: asyncio.Event) -> None:
    async with budget.hold(size):
        log.append(f"+{name}")
        await leave.wait()
        log.append(f"-{name}")


async def test_messages_over_the_budget_wait_their_turn_in_order() -> None:
    budget = ByteBudget(100)
    log: list[str] = []
    leave = {name: asyncio.Event() for name in "abcd"}
    tasks = [asyncio.create_task(_enter(budget, size, log, name, leave[name]))
             for name, size in zip("abcd", (60, 30, 50, 5), strict=True)]
    await asyncio.sleep(0.01)
    # a and b fit; c does not; d would fit, but waits behind c: first come, first served
    assert log == ["+a", "+b"] and budget.free == 10
    leave["b"].set()
    await asyncio.sleep(0.01)
    assert log == ["+a", "+b", "-b"] and budget.free == 40
    leave["a"].set()
    await asyncio.sleep(0.01)
    assert log[3:] == ["-a", "+c", "+d"] and budget.free == 45
    leave["c"].set()
    leave["d"].set()
    await asyncio.gather(*tasks)
    assert budget.free == 100 and not budget._waiting


async def test_a_message_larger_than_the_budget_goes_alone() -> None:
    budget = ByteBudget(100)
    log: list[str] = []
    first, big = asyncio.Event(), asyncio.Event()
    one = asyncio.create_task(_enter(budget, 10, log, "small", first))
    two = asyncio.create_task(_enter(budget, 10_000, log, "big", big))
    await asyncio.sleep(0.01)
    assert log == ["+small"]
    first.set()
    await asyncio.sleep(0.01)
    assert log == ["+small", "-small", "+big"] and budget.free == 0
    big.set()
    await asyncio.gather(one, two)
    assert budget.free == 100


async def test_a_client_that_leaves_while_waiting_gives_its_turn_away() -> None:
    budget = ByteBudget(100)
    log: list[str] = []
    leave = {name: asyncio.Event() for name in "abc"}
    a = asyncio.create_task(_enter(budget, 90, log, "a", leave["a"]))
    await asyncio.sleep(0.01)
    b = asyncio.create_task(_enter(budget, 50, log, "b", leave["b"]))
    c = asyncio.create_task(_enter(budget, 10, log, "c", leave["c"]))
    await asyncio.sleep(0.01)
    assert log == ["+a"]
    b.cancel()  # the client of b hung up; c, behind it, fits now
    with pytest.raises(asyncio.CancelledError):
        await b
    await asyncio.sleep(0.01)
    assert log == ["+a", "+c"] and budget.free == 0
    leave["a"].set()
    leave["c"].set()
    await asyncio.gather(a, c)
    assert budget.free == 100 and not budget._waiting


async def test_a_grant_that_meets_a_cancellation_is_handed_on() -> None:
    budget = ByteBudget(100)
    log: list[str] = []
    leave = {name: asyncio.Event() for name in "abc"}
    a = asyncio.create_task(_enter(budget, 100, log, "a", leave["a"]))
    await asyncio.sleep(0.01)
    b = asyncio.create_task(_enter(budget, 100, log, "b", leave["b"]))
    c = asyncio.create_task(_enter(budget, 100, log, "c", leave["c"]))
    await asyncio.sleep(0.01)
    leave["a"].set()
    await asyncio.sleep(0)  # a leaves and grants b, whose task has not run yet
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    await asyncio.sleep(0.01)
    assert "+b" not in log and log[-1] == "+c"
    leave["c"].set()
    await asyncio.gather(a, c)
    assert budget.free == 100


async def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ByteBudget(0)
