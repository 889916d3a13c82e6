"""The dynamic batcher: requests wait in a bounded queue; one worker task forms batches under a token budget and a
maximum wait, runs the model off the event loop, and hands each request its rows.

Written here rather than taken from a library: the batching policy (token budget over already-tokenized texts,
dropping the work of clients that went away, back-pressure as an immediate QueueFull) is the serving half of the
product's speed, and the generic ASGI batching helpers batch by request count, not by tokens.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

Row = TypeVar("Row")


class QueueFull(Exception):
    """The queue holds `max_queue` requests already: the caller answers 429 with Retry-After."""


@dataclass
class Pending(Generic[Row]):
    items: list[Any]  # model inputs (token id lists or text pairs)
    tokens: int  # their total tokens: what the budget counts
    future: asyncio.Future[list[Row]]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    tokens: int = 0
    dropped: int = 0  # requests whose client went away before their batch ran


class Batcher(Generic[Row]):
    """Batch requests for `run(items) -> rows` (one row per item, in order).

    Args:
        run: the model call; runs on one background thread (torch uses its own intra-op threads).
        max_tokens: token budget of one batch (a single request above it runs alone, whole).
        max_wait_ms: how long a batch waits for more requests once the queue is empty (0: not at all — requests that
            arrive while the model runs form the next batch, so batching costs no latency at low load).
        max_queue: requests waiting at most; beyond it `submit` raises QueueFull at once.
        pool: the thread the model runs on (shared by the batchers of one model); default a private one.
    Example:
        >>> b = Batcher(lambda ids: engine_rows(ids), max_tokens=8192, max_wait_ms=5, max_queue=256)
        >>> rows = await b.submit(token_ids, tokens=sum(map(len, token_ids)))
    """

    def __init__(
        self,
        run: Callable[[list[Any]], Sequence[Row]],
        *,
        max_tokens: int,
        max_wait_ms: float,
        max_queue: int,
        pool: ThreadPoolExecutor | None = None,
    ):
        self.run = run
        self.max_tokens = max_tokens
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue[Pending[Row]] = asyncio.Queue(maxsize=max_queue)
        self.stats = BatcherStats()
        self.on_drop: Callable[[], None] = lambda: None  # told each time a gone client's work is skipped
        self.on_depth: Callable[[], None] = lambda: None  # told whenever the number of waiting requests changes
        self.own_pool = pool is None  # batchers of one model share its thread: one forward pass at a time
        self.pool = pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoderforge-model")
        self.task: asyncio.Task[None] | None = None
        self.held: Pending[Row] | None = None  # a request that did not fit the last batch: first in the next

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Finish the batches already queued (graceful shutdown drains in-flight requests), then stop."""
        while self.held is not None or not self.queue.empty():
            await asyncio.sleep(0.005)
        if self.task is not None:
            self.task.cancel()
        if self.own_pool:
            self.pool.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        return self.queue.qsize() + (self.held is not None)

    async def submit(self, items: list[Any], *, tokens: int) -> list[Row]:
        """Queue one request's items; returns their rows. Cancelling the awaiting task (client gone) drops the work
        if its batch has not started."""
        fut: asyncio.Future[list[Row]] = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(Pending(items, tokens, fut))
        except asyncio.QueueFull:
            raise QueueFull from None
        self.on_depth()
        return await fut

    async def _next(self) -> Pending[Row]:
        if self.held is not None:
            p, self.held = self.held, None
            return p
        return await self.queue.get()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next()
            if first.future.done():  # cancelled while queued
                self.stats.dropped += 1
                self.on_drop()
                continue
            batch, budget = [first], first.tokens
            deadline = time.perf_counter() + self.max_wait
            while budget < self.max_tokens:
                # continuous batching: take whatever queued while the model was busy; wait for more only up to
                # max_wait (0 = never: a lone request runs at once, under load batches form by themselves)
                if self.queue.qsize():
                    nxt = self.queue.get_nowait()
                else:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self.queue.get(), timeout=left)
                    except (asyncio.TimeoutError, TimeoutError):
                        break
                if nxt.future.done():
                    self.stats.dropped += 1
                    self.on_drop()
                    continue
                if budget + nxt.tokens > self.max_tokens:
                    self.held = nxt
                    break
                batch.append(nxt)
                budget += nxt.tokens
            items = [x for p in batch for x in p.items]
            self.on_depth()  # the batch left the queue
            try:
                rows = await loop.run_in_executor(self.pool, self.run, items)
            except Exception:  # noqa: BLE001 - a failing request must not fail the others batched with it
                await self._one_by_one(batch)
                continue
            self.stats.batches += 1
            self.stats.items += len(items)
            self.stats.tokens += budget
            start = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result(list(rows[start : start + len(p.items)]))
                start += len(p.items)

    async def _one_by_one(self, batch: list[Pending[Row]]) -> None:
        """After a batch failed: run its requests alone, so only the one that breaks the model gets the error."""
        loop = asyncio.get_running_loop()
        for p in batch:
            if p.future.done():
                continue
            try:
                rows = await loop.run_in_executor(self.pool, self.run, p.items)
            except Exception as e:  # noqa: BLE001 - handed to the request, which answers for it
                if not p.future.done():
                    p.future.set_exception(e)
                continue
            if not p.future.done():
                p.future.set_result(list(rows))
