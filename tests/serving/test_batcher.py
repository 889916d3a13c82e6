"""The dynamic batcher alone (no server): token budget and order, work of cancelled requests skipped, one failing
request does not fail the others, back-pressure."""

from __future__ import annotations

import asyncio

import pytest

from encoderforge.serving.batcher import Batcher, QueueFull


def test_batches_respect_the_token_budget_and_keep_each_requests_rows() -> None:
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [x * 10 for x in items]

    async def main() -> list[list[int]]:
        b = Batcher(run, max_tokens=10, max_wait_ms=20, max_queue=16)
        b.start()
        # 4 tokens each: two fit a batch (8 <= 10), the third is held for the next one
        res = await asyncio.gather(*(b.submit([i, i + 100], tokens=4) for i in range(5)))
        await b.stop()
        return res

    res = asyncio.run(main())
    assert res == [[i * 10, (i + 100) * 10] for i in range(5)]  # each request its own rows, in order
    assert all(len(c) <= 4 for c in calls) and sum(len(c) for c in calls) == 10  # <= 2 requests x 2 items per batch
    assert [x for c in calls for x in c][:2] == [0, 100]  # first come, first served


def test_cancelled_requests_are_skipped_and_counted() -> None:
    ran: list[int] = []

    async def main() -> tuple[int, int]:
        gate = asyncio.Event()

        def run(items: list[int]) -> list[int]:
            ran.extend(items)
            return items

        b = Batcher(run, max_tokens=1, max_wait_ms=0, max_queue=16)
        dropped: list[int] = []
        b.on_drop = lambda: dropped.append(1)
        waiting = [asyncio.ensure_future(b.submit([i], tokens=1)) for i in range(4)]
        await asyncio.sleep(0)  # all four queued before the worker starts
        for t in waiting[1:3]:
            t.cancel()
        gate.set()
        b.start()
        await asyncio.gather(waiting[0], waiting[3])
        await b.stop()
        return b.stats.dropped, len(dropped)

    stats, told = asyncio.run(main())
    assert stats == told == 2 and ran == [0, 3]  # the model never saw the work of the requests that went away


def test_a_request_that_breaks_the_model_fails_alone() -> None:
    def run(items: list[int]) -> list[int]:
        if -1 in items:
            raise ValueError("bad input")
        return items

    async def main() -> list:
        b = Batcher(run, max_tokens=100, max_wait_ms=20, max_queue=16)
        b.start()
        res = await asyncio.gather(*(b.submit(x, tokens=1) for x in ([1], [-1], [2])), return_exceptions=True)
        await b.stop()
        return res

    ok1, bad, ok2 = asyncio.run(main())
    assert ok1 == [1] and ok2 == [2] and isinstance(bad, ValueError)


def test_a_full_queue_refuses_at_once() -> None:
    async def main() -> None:
        b = Batcher(lambda items: items, max_tokens=10, max_wait_ms=0, max_queue=2)
        first = [asyncio.ensure_future(b.submit([i], tokens=1)) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit([9], tokens=1)
        b.start()
        assert await asyncio.gather(*first) == [[0], [1]]
        await b.stop()

    asyncio.run(main())
