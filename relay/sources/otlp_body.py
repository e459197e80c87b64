"""Reading one pushed request body within bounds, for the OTLP receiver.

Owns: the body's size cap (a declared Content-Length above it is refused before a byte is
read, a chunked body as soon as it passes it), the deadline for the whole body to arrive,
and the byte budget that bounds the bodies all requests hold in memory at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import web

CHUNK = 256 * 1024
# How long a request waits for room in the memory budget before it is refused with 503.
BUDGET_WAIT_SECONDS = 2.0


class ByteBudget:
    """Bytes held by requests in progress, against a limit. A request alone is always let in,
    however large, so one body at the size cap can pass a budget smaller than it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._freed = asyncio.Event()

    def try_take(self, n: int) -> bool:
        if self.held and self.held + n > self.limit:
            return False
        self.held += n
        return True

    async def take(self, n: int, wait: float) -> bool:
        """Take n bytes, waiting up to `wait` seconds for others to give some back."""
        deadline = time.monotonic() + wait
        while not self.try_take(n):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), remaining)
            except TimeoutError:
                return self.try_take(n)
        return True

    def give_back(self, n: int) -> None:
        self.held -= n
        self._freed.set()


@dataclass
class BodyRefused(Exception):
    """The body was not read: why, as a receiver rejection (reason label, status, message)."""

    reason: str
    status: int
    message: str
    retry_after: str | None = None


class HeldBody:
    """A request's bytes and its share of the budget, given back once: `async with` it."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.held = 0

    async def take(self, n: int, wait: float = BUDGET_WAIT_SECONDS) -> None:
        if not await self._budget.take(n, wait):
            raise BodyRefused("memory", 503, f"the receiver holds {self._budget.held} bytes of request bodies "
                                             f"(max_body_memory_bytes {self._budget.limit}); retry later", "1")
        self.held += n

    async def __aenter__(self) -> HeldBody:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._budget.give_back(self.held)
        self.held = 0


async def read_body(request: web.Request, held: HeldBody, max_bytes: int, timeout: float) -> bytes:
    """The whole body, as sent, taking its size from the budget as it comes; raises
    BodyRefused when it is too large, too slow or finds no room."""
    declared = request.content_length
    if declared is not None:
        if declared > max_bytes:
            raise BodyRefused("too_large", 413, f"Content-Length {declared} exceeds {max_bytes} bytes")
        await held.take(declared)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise BodyRefused("too_large", 413, f"body exceeds {max_bytes} bytes")
                if declared is None:
                    await held.take(len(chunk))
                chunks.append(chunk)
    except TimeoutError:
        raise BodyRefused("body_timeout", 408, f"the body did not arrive within {timeout:g}s "
                                               f"({size} bytes came)") from None
    return b"".join(chunks)
