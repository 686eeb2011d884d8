"""The closed load loop every load benchmark drives: ``concurrency`` clients, each starting its next
step as soon as its last one is done, until a :class:`Budget` says no more steps may start.

A step is whatever one client does at a time (an HTTP request, a DeploymentHandle call); the benchmark
records what it measures inside the step. Steps already started always finish (or are cancelled once
``timeout_s`` has passed, see :func:`closed_loop`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# step(client, turn): client in [0, concurrency), turn = how many steps this client started before
Step = Callable[[int, int], Awaitable[None]]


@dataclass(frozen=True)
class Budget:
    """When a closed loop stops starting steps (all bounds together; the first one reached stops it).

    Attributes:
        seconds: no step starts after this many seconds (once ``min_steps`` have started).
        max_steps: no step starts after this many have started, across all clients (None: no bound).
        min_steps: steps to start even past ``seconds`` ...
        max_seconds: ... but none after this many seconds.
        stop: no step starts once this returns True (an event set elsewhere, an error count).
    """

    seconds: float = math.inf
    max_steps: int | None = None
    min_steps: int = 0
    max_seconds: float = math.inf
    stop: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.max_seconds <= 0:
            raise ValueError("seconds and max_seconds must be > 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1 (or None)")
        if self.min_steps < 0:
            raise ValueError("min_steps must be >= 0")

    def allows(self, elapsed_s: float, started: int) -> bool:
        """Whether one more step may start ``elapsed_s`` seconds in, after ``started`` steps."""
        if self.stop is not None and self.stop():
            return False
        if self.max_steps is not None and started >= self.max_steps:
            return False
        if elapsed_s >= self.max_seconds:
            return False
        return elapsed_s < self.seconds or started < self.min_steps


@dataclass
class LoopState:
    """What a running loop shares with its steps.

    Attributes:
        t0: ``time.monotonic()`` at the start of the loop.
        started: steps started so far, across clients.
        cancelled: steps still running at ``timeout_s``, cancelled (set when the loop returns).
    """

    t0: float
    started: int = 0
    cancelled: int = 0

    def remaining_s(self, budget: Budget) -> float:
        """Seconds until ``budget.seconds`` (0 once passed): how long a step may sleep, at most."""
        return max(0.0, self.t0 + budget.seconds - time.monotonic())


async def closed_loop(step: Step, concurrency: int, budget: Budget, timeout_s: float | None = None, state: LoopState | None = None) -> LoopState:
    """Run ``concurrency`` clients, each calling ``await step(client, turn)`` while ``budget`` allows.

    Args:
        step: one unit of a client's work; it records its own measurements. An exception in a step
            ends that client (and is raised from here once all clients are done).
        concurrency: clients (>= 1).
        budget: when no more steps start (checked before each step).
        timeout_s: cancel the steps still running this many seconds after the start (None: wait for
            all); the count of cancelled clients is in the returned state.
        state: a :class:`LoopState` to share with the steps (made here when None).

    Returns:
        The loop's :class:`LoopState`.

    Raises:
        ValueError: ``concurrency`` < 1.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    state = state if state is not None else LoopState(time.monotonic())

    async def client(c: int) -> None:
        turn = 0
        while budget.allows(time.monotonic() - state.t0, state.started):
            state.started += 1
            await step(c, turn)
            turn += 1

    tasks = [asyncio.ensure_future(client(c)) for c in range(concurrency)]
    _, late = await asyncio.wait(tasks, timeout=timeout_s)
    for t in late:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    state.cancelled = len(late)
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise errors[0]
    return state
