"""Deadline-aware admission: will a new request finish at a stage before its deadline?

A stage (or its caller) keeps one :class:`StageAdmission`: the requests it has in flight there (waiting and
running) and the stage's measured service time per request (an exponentially weighted moving average of
its batch durations divided by their sizes). A new request behind ``n`` others, at a stage with
``parallel`` replicas working at once, finishes after about ``(n + 1) / parallel`` service times; one that
cannot make its deadline is refused at once (:class:`deployments.errors.DeadlineExceeded`, 503 ``deadline`` with a
``Retry-After``) instead of waiting in the queue and timing out at the client.

Deadlines are absolute wall-clock times (``time.time()``, seconds since the epoch): the ingress sets one per
request and passes it with the job, and every stage checks it against its own clock. On one machine that is
one clock; across nodes it assumes their clocks are synchronised (NTP, well under a second apart), which is
small next to the deadlines it serves (seconds).

Why per request and not per batch: on a CPU a batch of ``b`` costs about ``b`` times one request, so a
batch time measured at light load (batches of 1) would say nothing of a full queue's wait; the time per
request, measured at the batch sizes the load makes, is the stage's throughput on any device.

Pure Python, no Ray: the clock is injected, so the tests give exact times.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

from deployments.errors import DeadlineExceeded


class StageAdmission:
    """The in-flight count and service time of one stage, and the admission test of a new request.

    Args:
        stage: the stage's name, in refusal messages (``encode``, ``decode``, ``amg``, ``embed``).
        parallel: replicas of the stage that work at once (the caller's view; 1 for a replica's own
            queue), >= 1.
        alpha: weight of the newest batch in the moving average, in (0, 1].
        service_s: seconds per request until one is measured (None: unknown; nothing is refused then).
        clock: wall-clock seconds (default ``time.time``); deadlines are in the same clock.

    Raises:
        ValueError: ``parallel`` < 1, ``alpha`` outside (0, 1], or a negative ``service_s``.
    """

    def __init__(
        self,
        stage: str,
        parallel: int = 1,
        alpha: float = 0.3,
        service_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1]; got {alpha!r}")
        if service_s is not None and not service_s >= 0:
            raise ValueError(f"service_s must be >= 0 or None; got {service_s!r}")
        self.stage = stage
        self.alpha = alpha
        self.clock = clock
        self.service_s = service_s
        self.in_flight = 0
        self.refused = 0
        self.parallel = 1
        self.set_parallel(parallel)

    def set_parallel(self, parallel: int) -> None:
        """Replicas of the stage that work at once, >= 1.

        Raises:
            ValueError: ``parallel`` is not an integer >= 1.
        """
        if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
            raise ValueError(f"parallel must be an integer >= 1; got {parallel!r}")
        self.parallel = parallel

    def observe(self, batch_s: float, size: int = 1) -> None:
        """One batch's duration, seconds (>= 0), and its size (requests, >= 1): its time per request into
        the moving average (the first sets it)."""
        per_request_s = max(0.0, float(batch_s)) / max(1, int(size))
        self.service_s = (
            per_request_s if self.service_s is None else self.alpha * per_request_s + (1 - self.alpha) * self.service_s
        )

    def report(self, service_s: float | None, parallel: int | None = None) -> None:
        """The stage's own service time (its moving average, seconds per request) and parallelism, as it
        reported them to a caller; None keeps the current value."""
        if service_s is not None and service_s >= 0:
            self.service_s = float(service_s)
        if parallel is not None:
            self.set_parallel(parallel)

    def wait_s(self, ahead: int | None = None) -> float:
        """Seconds until a new request would be done here: ``(ahead + 1) / parallel`` service times; 0
        while no service time is known.

        Args:
            ahead: requests ahead of it (default: those in flight).
        """
        if self.service_s is None:
            return 0.0
        ahead = self.in_flight if ahead is None else ahead
        return (ahead + 1) * self.service_s / self.parallel

    def refusal(
        self, deadline: float | None, before_s: float = 0.0, ahead: int | None = None
    ) -> DeadlineExceeded | None:
        """The error :meth:`check` would raise for a request with ``deadline``, or None; counts nothing.

        Args:
            deadline: absolute wall-clock time (``clock()`` seconds), or None (no deadline: admitted).
            before_s: seconds of other work the request still has before it reaches this stage's queue.
            ahead: requests ahead of it (default: those in flight; 0 for one whose turn has come).

        Returns:
            None when ``now + before_s + wait_s()`` is before the deadline; else a :class:`DeadlineExceeded`
            whose ``retry_after_s`` is the whole seconds (>= 1) the estimate runs past what is left of the
            deadline (all of it when the deadline has passed): about when the queue ahead has drained
            enough for the same budget.
        """
        if deadline is None:
            return None
        left = deadline - self.clock()
        needed = before_s + self.wait_s(ahead)
        if left > 0 and needed <= left:
            return None
        retry_after_s = max(1, math.ceil(needed - max(left, 0.0)))
        if left <= 0:
            why = f"the request's deadline passed {-left:.3f} s ago, before {self.stage}"
        else:
            counted = f"{self.in_flight} in flight" if ahead is None else f"{ahead} ahead"
            why = (
                f"{self.stage} would take about {needed:.3f} s ({counted}, "
                f"{self.service_s:.3f} s per request, {self.parallel} at once); {left:.3f} s of the deadline left"
            )
        return DeadlineExceeded(why, retry_after_s)

    def check(self, deadline: float | None, before_s: float = 0.0, ahead: int | None = None) -> None:
        """Refuse a request that cannot finish here before ``deadline`` (:meth:`refusal`), counting it.

        Raises:
            DeadlineExceeded: the deadline has passed, or ``now + before_s + wait_s(ahead)`` is after it.
        """
        error = self.refusal(deadline, before_s, ahead)
        if error is not None:
            self.refused += 1
            raise error

    @contextlib.contextmanager
    def admit(self, deadline: float | None, before_s: float = 0.0) -> Iterator[None]:
        """:meth:`check`, then count the request in flight until the block exits (however it exits)."""
        self.check(deadline, before_s)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    @contextlib.contextmanager
    def served(self, deadline: float | None, before_s: float = 0.0) -> Iterator[None]:
        """:meth:`admit`, and the block's duration into the moving average when it ends normally: the
        time per request of a stage whose requests in flight share its CPU (or batch together), so a block
        that took ``t`` seconds with ``n`` requests in flight counts ``t / n`` (:meth:`observe`)."""
        with self.admit(deadline, before_s):
            t0 = time.perf_counter()
            yield
            self.observe(time.perf_counter() - t0, self.in_flight)

    def state(self) -> dict:
        """``{"in_flight", "service_s", "parallel", "refused"}`` (for ``stats()``)."""
        return {
            "in_flight": self.in_flight,
            "service_s": self.service_s,
            "parallel": self.parallel,
            "refused": self.refused,
        }
