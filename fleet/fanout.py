"""Waiting on several things at once, every task owned by an `asyncio.TaskGroup`: no task
outlives the call that started it, whatever ends it (an error, a cancellation)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from fleet.errors import FleetError, HostsFailed

T = TypeVar("T")


async def first_of(*waits: Awaitable[Any]) -> int:
    """Await the first of `waits` to end, cancel the others; return its index. Its error,
    if it failed, is raised as it is (not in an ExceptionGroup)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(wait)) for wait in waits]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task not in done:
                    task.cancel()
    except BaseExceptionGroup as group_error:
        error = _single(group_error)
        raise error from error.__cause__  # the one error, unwrapped, its own cause kept
    return next(index for index, task in enumerate(tasks) if task in done)


async def all_of(*works: Awaitable[T]) -> list[T]:
    """Await all of `works`; their results, in order. The first to fail cancels the others
    and its error is raised as it is."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(work)) for work in works]
    except BaseExceptionGroup as group_error:
        error = _single(group_error)
        raise error from error.__cause__
    return [task.result() for task in tasks]


async def on_each(items: Iterable[T], action: Callable[[T], Awaitable[Any]]) -> None:
    """`action(item)` for every item at once, each to its end: one host's failure does not
    cut another's work short. The FleetErrors combine into one (HostsFailed: a line per
    host, in the items' order); anything else (a bug) cancels the rest and is raised."""
    items = list(items)
    errors: dict[int, FleetError] = {}

    async def one(index: int, item: T) -> None:
        try:
            await action(item)
        except FleetError as exc:
            errors[index] = exc

    await all_of(*(one(index, item) for index, item in enumerate(items)))
    if errors:
        raise HostsFailed.of([errors[index] for index in sorted(errors)])


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An `asyncio.TaskGroup` whose error comes out as itself, not in an ExceptionGroup:
    the first failure (of a task or of the body) cancels the rest and is raised."""
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as group_error:
        error = _single(group_error)
        raise error from error.__cause__


async def settled(work: Callable[[], Awaitable[T]]) -> T | FleetError:
    """`work()`'s result, or the FleetError it raised (to be looked at by whoever awaits it,
    rather than ending the task group it runs in). `work` is called inside the task, so a
    task cancelled before it ran leaves no coroutine unawaited."""
    try:
        return await work()
    except FleetError as exc:
        return exc


async def _awaited(work: Awaitable[T]) -> T:
    return await work


def _single(group: BaseExceptionGroup) -> BaseException:
    """The first error of a task group that is not a cancellation."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _single(error)
        if not isinstance(error, asyncio.CancelledError):
            return error
    return group.exceptions[0]
