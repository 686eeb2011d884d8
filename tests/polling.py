"""Waiting for a condition with a deadline, instead of sleeping a fixed time and hoping it holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.25) -> T:
    """Call ``check`` every ``interval_s`` seconds until it returns a truthy value; return that value.

    Args:
        check: the condition; exceptions it raises propagate (catch them in ``check`` where a failure
            is expected while waiting, e.g. a connection refused before a server is up).
        timeout_s: seconds to wait at most.
        what: the condition in words, for the failure message.
        interval_s: seconds between checks.

    Raises:
        AssertionError: ``check`` was still falsy after ``timeout_s`` (names ``what``).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(interval_s)
