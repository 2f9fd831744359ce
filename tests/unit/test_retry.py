"""fleet/retry.py: the one retry policy. A fake clock and a fake sleep (advancing the clock)
replace fleet.retry's own `time` and `asyncio`, so nothing waits and nothing else is touched."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from fleet import retry
from fleet.retry import RECONNECT, S3_REQUESTS, TAR_STREAMS, RetryPolicy, reconnect


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(retry, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(retry, "asyncio", SimpleNamespace(sleep=clock.sleep))
    return clock


async def pauses(retrying) -> list[bool]:
    """pause() until it says no (at most 50 times)."""
    answers = []
    for _ in range(50):
        answers.append(await retrying.pause())
        if not answers[-1]:
            break
    return answers


# -- attempts ----------------------------------------------------------------------------------

async def test_attempts_spent_after_attempts_minus_one_pauses(clock):
    retrying = RetryPolicy(first=0.1, cap=1.0, attempts=3).start()
    assert await pauses(retrying) == [True, True, False]
    assert len(clock.sleeps) == 2  # before the 2nd and the 3rd attempt; none after the 3rd
    assert retrying.failures == 3


async def test_one_attempt_allows_no_pause_and_no_sleep(clock):
    assert await pauses(RetryPolicy(first=0.1, cap=1.0, attempts=1).start()) == [False]
    assert clock.sleeps == []


async def test_s3_requests_keep_five_attempts(clock):
    assert S3_REQUESTS.attempts == 5
    assert await pauses(S3_REQUESTS.start()) == [True] * 4 + [False]


# -- budget ------------------------------------------------------------------------------------

async def test_budget_spent_ends_the_pauses_and_the_last_wait_is_cut_to_it(clock):
    retrying = RetryPolicy(first=1.0, cap=10.0, budget=5.0).start()
    assert await pauses(retrying) == [True, True, True, False]
    assert clock.sleeps == [1.0, 2.0, 2.0]  # 1, 2, then 4 cut to the 2 s left
    assert retrying.left == 0.0
    assert retrying.elapsed == pytest.approx(5.0)


async def test_budget_counts_time_spent_in_attempts_too(clock):
    retrying = RetryPolicy(first=1.0, cap=1.0, budget=3.0).start()
    clock.now += 2.5  # an attempt that took 2.5 s
    assert retrying.left == pytest.approx(0.5)
    assert await retrying.pause() is True
    assert clock.sleeps == [pytest.approx(0.5)]
    assert await retrying.pause() is False
    assert len(clock.sleeps) == 1


async def test_budget_gone_before_the_first_failure_means_no_sleep(clock):
    retrying = RetryPolicy(first=1.0, cap=1.0, budget=2.0).start()
    clock.now += 2.0
    assert await retrying.pause() is False
    assert clock.sleeps == []


async def test_no_budget_has_no_left(clock):
    retrying = RetryPolicy(first=1.0, cap=1.0).start()
    assert retrying.left is None
    clock.now += 7
    assert retrying.elapsed == 7


async def test_without_attempts_or_budget_it_goes_on(clock):
    assert await pauses(RetryPolicy(first=0.01, cap=0.02).start()) == [True] * 50


# -- delays ------------------------------------------------------------------------------------

async def test_delays_double_up_to_the_cap(clock):
    retrying = RetryPolicy(first=0.5, cap=5.0).start()
    for _ in range(7):
        await retrying.pause()
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_delay_with_another_factor():
    policy = RetryPolicy(first=1.0, cap=100.0, factor=3.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [1.0, 3.0, 9.0, 27.0, 81.0]


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
async def test_jitter_stays_within_half_and_whole_delay(clock, monkeypatch, draw):
    monkeypatch.setattr(retry.random, "random", lambda: draw)
    retrying = RetryPolicy(first=1.0, cap=4.0, jitter=True).start()
    for _ in range(5):
        await retrying.pause()
    for failures, slept in enumerate(clock.sleeps, start=1):
        delay = retrying.policy.delay(failures)
        assert slept == pytest.approx(delay * (0.5 + draw / 2))


async def test_jitter_spreads_over_half_to_whole_delay(clock):
    random.seed(7)
    policy = RetryPolicy(first=2.0, cap=2.0, jitter=True)
    for _ in range(300):
        await policy.start().pause()
    assert all(1.0 <= s <= 2.0 for s in clock.sleeps)
    assert min(clock.sleeps) < 1.1 and max(clock.sleeps) > 1.9  # really spread, not one value


# -- the uses ----------------------------------------------------------------------------------

def test_uses_keep_their_numbers():
    assert (S3_REQUESTS.first, S3_REQUESTS.cap, S3_REQUESTS.jitter) == (0.4, 5.0, True)
    assert (TAR_STREAMS.attempts, TAR_STREAMS.jitter) == (3, True)
    assert (RECONNECT.first, RECONNECT.cap, RECONNECT.attempts, RECONNECT.budget) == (0.25, 1.0, None, None)


async def test_reconnect_has_the_reconnect_pace_within_a_budget(clock):
    retrying = reconnect(2.0).start()
    assert await pauses(retrying) == [True, True, True, True, False]
    assert clock.sleeps == [0.25, 0.5, 1.0, 0.25]  # 1 s cap; the last wait cut to the budget's end
    assert sum(clock.sleeps) == pytest.approx(2.0)
