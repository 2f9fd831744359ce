"""fleet's one retry policy: exponential backoff, capped, with optional jitter, bounded by a
number of attempts, by a time budget, or by neither (until the caller is cancelled).

Every transient failure goes through it, each use with its own numbers: S3 requests
(`S3_REQUESTS`), tar streams to a host (`TAR_STREAMS`), SSH reconnects and commands to a
host being reconnected to (`RECONNECT`). A use keeps its own state between attempts, which
is why this is a loop helper and not a decorator: a GET resumes at the byte where it broke,
a reconnect resumes the host's log at the last byte stored.

    retrying = S3_REQUESTS.start()
    while True:
        try:
            return await attempt()
        except TRANSIENT as exc:
            if not await retrying.pause():
                raise ClientError(f"... {exc}") from exc

(tenacity and backoff wrap a callable; resuming at an offset needs the caller's loop anyway,
and this is 40 lines.)
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    first: float  # seconds to wait after the first failure; doubled (factor) after each
    cap: float  # the longest wait
    factor: float = 2.0
    jitter: bool = False  # each wait drawn from [delay/2, delay]: hosts do not retry in step
    attempts: int | None = None  # at most this many attempts in all (None: no count)
    budget: float | None = None  # seconds from start() after which no attempt begins (None: none)

    def delay(self, failures: int) -> float:
        """The wait after the `failures`-th failure (1-based), before jitter."""
        return min(self.cap, self.first * self.factor ** (failures - 1))

    def start(self) -> Retrying:
        return Retrying(self)


class Retrying:
    """One use of a policy: counts failures and time since start()."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def left(self) -> float | None:
        """Seconds of the budget left (None without a budget)."""
        if self.policy.budget is None:
            return None
        return max(0.0, self.policy.budget - self.elapsed)

    async def pause(self) -> bool:
        """After a failure: wait before the next attempt and return True, or return False at
        once when the policy allows no more (attempts spent, budget gone)."""
        self.failures += 1
        policy = self.policy
        if policy.attempts is not None and self.failures >= policy.attempts:
            return False
        left = self.left
        if left is not None and left <= 0:
            return False
        delay = policy.delay(self.failures)
        if policy.jitter:
            delay *= 0.5 + random.random() / 2
        if left is not None:
            delay = min(delay, left)
        log.debug("attempt %d failed; next in %.2f s", self.failures, delay)
        await asyncio.sleep(delay)
        return True


# S3 requests: a GET that broke mid-stream (resumed with a Range GET) or a PUT.
S3_REQUESTS = RetryPolicy(first=0.4, cap=5.0, jitter=True, attempts=5)
# A tar stream to hosts whose `tar -x` channel failed: the lane is sent again.
TAR_STREAMS = RetryPolicy(first=0.4, cap=5.0, jitter=True, attempts=3)
# Reaching a host again after its SSH connection was lost (the budget is the run's
# --host-timeout: `reconnect(host_timeout)`), and repeating a stop to a host being reached.
RECONNECT = RetryPolicy(first=0.25, cap=1.0)
RECONNECT_ATTEMPT_TIMEOUT = 5.0  # one SSH connection attempt, at most


def reconnect(budget: float) -> RetryPolicy:
    """RECONNECT with a time budget."""
    return RetryPolicy(first=RECONNECT.first, cap=RECONNECT.cap, factor=RECONNECT.factor, budget=budget)
