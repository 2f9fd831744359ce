"""Backoff between attempts at a transient failure (S3 or SSH)."""

from __future__ import annotations

import asyncio
import random


async def backoff(attempt: int) -> None:
    """Sleep before attempt `attempt + 1`: exponential, capped at 5 s, with jitter."""
    await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt) * (0.5 + random.random() / 2))
