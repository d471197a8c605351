"""Request limits shared by every process of the app: a rate per token (or per address, for
calls without one) and a cap on the long-polls one token keeps open.

The counts live in Redis (the `limits` library's sliding-window counters), so two instances of
the app behind a load balancer limit together. The defaults are far above what a marketplace or
a moderator does (50 requests/s per token, bursts of 200): they stop runaway clients, not use.
With Redis away, requests are let through (logged once a minute): the API keeps taking listings,
which Postgres records, while the broker is down.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Request
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from common.settings import Settings
from review.problems import Problem

log = logging.getLogger(__name__)
POLLS_KEY = "vitrine:long-polls:"
# Seconds a long-poll's count lives in Redis should its process die with it open.
POLL_LEASE = 120
EXEMPT = ("/healthz",)


def _item(rate: float, burst: int) -> RateLimitItemPerSecond:
    """`burst` requests per `burst / rate` seconds: a burst at once, then `rate` a second."""
    return RateLimitItemPerSecond(burst, max(1, round(burst / rate)))


def caller_key(request: Request) -> tuple[str, str]:
    """("token", digest) for a bearer token, else ("address", the client's address)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return "token", hashlib.sha256(value.strip().encode()).hexdigest()[:32]
    return "address", request.client.host if request.client is not None else "unknown"


class Limits:
    def __init__(self, settings: Settings) -> None:
        review = settings.review
        url = settings.services.broker_url
        self.per_token = _item(review.rate_limit, review.rate_burst)
        self.per_address = _item(review.address_rate_limit, review.address_rate_burst)
        self.polls_per_token = review.long_polls_per_token
        # Each open long-poll looks at Postgres five times a second on the app's threads: past
        # this many in one process, the others' requests would wait behind them.
        self.polls_per_process = review.long_polls_per_process
        self.open_polls = 0  # only ever changed on the event loop's thread
        self.url = url
        # Async clients belong to the event loop they were made on: one pair per loop (uvicorn
        # runs one; a test client may run several).
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[SlidingWindowCounterRateLimiter, aioredis.Redis]
        ] = weakref.WeakKeyDictionary()
        self._warned = 0.0

    def _for_this_loop(self) -> tuple[SlidingWindowCounterRateLimiter, aioredis.Redis]:
        loop = asyncio.get_running_loop()
        made = self._clients.get(loop)
        if made is None:
            storage = RedisStorage("async+" + self.url, implementation="redispy", key_prefix="vitrine:rate")
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=2)
            made = self._clients[loop] = (SlidingWindowCounterRateLimiter(storage), client)
        return made

    def client(self) -> aioredis.Redis:
        """The app's Redis, for this event loop."""
        return self._for_this_loop()[1]

    def _unavailable(self, error: Exception) -> None:
        if time.monotonic() - self._warned > 60:
            self._warned = time.monotonic()
            log.warning("request limits unavailable (%s): requests are let through", error)

    async def check(self, request: Request) -> None:
        """Count this request against its caller; a 429 problem past the limit."""
        if request.url.path in EXEMPT:
            return
        kind, key = caller_key(request)
        item = self.per_token if kind == "token" else self.per_address
        limiter, _ = self._for_this_loop()
        try:
            if await limiter.hit(item, kind, key):
                return
            stats = await limiter.get_window_stats(item, kind, key)
        except (RedisError, OSError, ConnectionError) as error:
            self._unavailable(error)
            return
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        raise Problem(
            429,
            "rate_limited",
            f"too many requests for this {kind}: at most {item.amount} in {item.multiples} s; "
            f"retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )

    @asynccontextmanager
    async def long_poll(self, request: Request) -> AsyncIterator[None]:
        """Hold one of the caller's long-poll places while the body runs; 429 when all are taken."""
        if self.open_polls >= self.polls_per_process:
            raise _too_many_waits(f"this server keeps at most {self.polls_per_process}")
        self.open_polls += 1
        try:
            async with self._token_place(request):
                yield
        finally:
            self.open_polls -= 1

    @asynccontextmanager
    async def _token_place(self, request: Request) -> AsyncIterator[None]:
        _, key = caller_key(request)
        name = POLLS_KEY + key
        _, client = self._for_this_loop()
        try:
            held = int(await client.incr(name))
            await client.expire(name, POLL_LEASE)
        except (RedisError, OSError) as error:
            self._unavailable(error)
            yield
            return
        try:
            if held > self.polls_per_token:
                raise _too_many_waits(f"one token keeps at most {self.polls_per_token}")
            yield
        finally:
            try:
                await client.decr(name)
            except (RedisError, OSError) as error:
                self._unavailable(error)

    async def close(self) -> None:
        made = self._clients.get(asyncio.get_running_loop())
        if made is not None:
            await made[1].aclose()


def _too_many_waits(limit: str) -> Problem:
    return Problem(
        429,
        "too_many_waits",
        f"wait: {limit} long-polls open at once; retry in 1 s or use ?wait=0",
        [{"pointer": "/query/wait", "code": "too_many_waits", "detail": "too many open at once"}],
        headers={"Retry-After": "1"},
    )
