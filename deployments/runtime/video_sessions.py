"""The video sessions one ``VideoSegmenter`` replica holds: bounded in count and bytes, expired after a
TTL, and remembered after they end so that a late call is told why.

Each entry is one :class:`models.sam2_video_session.VideoSession` with its own ``asyncio.Lock`` (calls on
one session are serialised; different sessions run concurrently) and a cancel flag that a running
propagation checks before every frame.

Rules:

* **Bound.** A new session is refused (:class:`deployments.errors.SessionsFull`, 503 with
  ``Retry-After``) when the store holds ``max_sessions`` sessions or ``max_bytes`` bytes (every session's
  frames and state tensors, as last measured). An open session is never evicted to make room: a session
  ends only when closed or expired.
* **TTL.** A session idle for ``ttl_s`` expires. Expiry is checked lazily on every call (:meth:`get`,
  :meth:`open`) and by :meth:`sweep`, which the replica runs periodically. A session in a call (its lock
  held) does not expire; its idle time starts when the call ends.
* **Tombstones.** The ids of closed and expired sessions are remembered (the newest
  ``max_tombstones``): a call about one is :class:`deployments.errors.UnknownSession` (404
  ``unknown_session``). An id the store never held is :class:`deployments.errors.SessionLost` (404
  ``session_lost``): its session was opened on a replica that died, or the ring of replicas moved the id.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deployments.errors import SessionLost, SessionsFull, UnknownSession


@dataclass
class SessionEntry:
    """One held session.

    Attributes:
        session_id: the id (uuid4 hex, made by the ingress).
        session: the :class:`models.sam2_video_session.VideoSession` (Any: the store does not touch it).
        nbytes: bytes of its frames and state, as last measured.
        last_used: clock time the last call on it ended (or began, while one runs).
        lock: serialises calls on the session.
        cancel: set to stop a running propagation before its next frame.
        propagating: a propagation is running.
    """

    session_id: str
    session: Any
    nbytes: int
    last_used: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cancel: threading.Event = field(default_factory=threading.Event)
    propagating: bool = False


class SessionStore:
    """A replica's video sessions by id.

    Args:
        max_sessions: sessions held at most.
        max_bytes: bytes (frames plus state) held at most; a new session is refused past it.
        ttl_s: idle seconds after which a session expires.
        max_tombstones: ids of ended sessions remembered.
        retry_after_s: the ``Retry-After`` of a refusal.
        clock: seconds, monotonic (``time.monotonic``; tests pass their own).

    Raises:
        ValueError: a bound < 1 or ``ttl_s <= 0``.
    """

    def __init__(
        self,
        max_sessions: int,
        max_bytes: int,
        ttl_s: float,
        max_tombstones: int = 4096,
        retry_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sessions < 1 or max_bytes < 1 or max_tombstones < 1:
            raise ValueError("max_sessions, max_bytes and max_tombstones must be greater than 0")
        if not ttl_s > 0:
            raise ValueError("ttl_s must be greater than 0")
        self.max_sessions, self.max_bytes, self.ttl_s = max_sessions, max_bytes, float(ttl_s)
        self.max_tombstones, self.retry_after_s = max_tombstones, retry_after_s
        self._clock = clock
        self._entries: dict[str, SessionEntry] = {}
        self._reserved: dict[str, int] = {}  # sessions being opened: id -> frame bytes
        self._ended: OrderedDict[str, str] = OrderedDict()  # id -> "closed" | "expired"
        self.counters = {"opened": 0, "closed": 0, "expired": 0, "refused": 0}

    # ------------------------------------------------------------------ lifecycle
    def reserve(self, session_id: str, frame_bytes: int) -> None:
        """Hold a place for a new session of ``frame_bytes`` while its state is built (sessions being
        opened count against the bounds too); :meth:`add` fills it, :meth:`release` gives it up.

        Raises:
            SessionsFull: the count or byte bound is reached.
            ValueError: ``session_id`` is or was held here.
        """
        self.sweep()
        if session_id in self._entries or session_id in self._ended or session_id in self._reserved:
            raise ValueError(f"session id {session_id!r} is already used")
        held = self.bytes
        if len(self._entries) + len(self._reserved) >= self.max_sessions or held + frame_bytes > self.max_bytes:
            self.counters["refused"] += 1
            raise SessionsFull(
                f"this replica holds {len(self._entries)} video sessions ({held} bytes) of at most "
                f"{self.max_sessions} ({self.max_bytes} bytes); close idle sessions or retry later",
                self.retry_after_s,
            )
        self._reserved[session_id] = frame_bytes

    def release(self, session_id: str) -> None:
        """Give up the place :meth:`reserve` held (the session could not be opened)."""
        self._reserved.pop(session_id, None)

    def add(self, session_id: str, session: Any, nbytes: int) -> SessionEntry:
        """Hold ``session`` under ``session_id`` (after :meth:`reserve`)."""
        self._reserved.pop(session_id, None)
        entry = SessionEntry(session_id, session, nbytes, self._clock())
        self._entries[session_id] = entry
        self.counters["opened"] += 1
        return entry

    def get(self, session_id: str) -> SessionEntry:
        """The held session, its idle time restarted.

        Raises:
            UnknownSession: closed or expired (it is among the tombstones).
            SessionLost: never held here.
        """
        entry = self._entries.get(session_id)
        if entry is not None and self._expired(entry):
            self._end(session_id, "expired")
            entry = None
        if entry is None:
            if session_id in self._ended:
                raise UnknownSession(session_id)
            raise SessionLost(session_id)
        entry.last_used = self._clock()
        return entry

    def close(self, session_id: str) -> SessionEntry:
        """End the session (its state is dropped when no call holds it any more).

        Raises:
            UnknownSession, SessionLost: as :meth:`get`.
        """
        entry = self.get(session_id)
        entry.cancel.set()  # a running propagation stops at its next frame
        self._end(session_id, "closed")
        return entry

    def touch(self, entry: SessionEntry, nbytes: int | None = None) -> None:
        """A call on ``entry`` ended: restart its idle time, record its new size."""
        entry.last_used = self._clock()
        if nbytes is not None:
            entry.nbytes = nbytes

    def sweep(self) -> list[str]:
        """Expire every idle session past its TTL; their ids."""
        gone = [sid for sid, e in self._entries.items() if self._expired(e)]
        for sid in gone:
            self._end(sid, "expired")
        return gone

    def expires_at(self, entry: SessionEntry) -> float:
        """Wall-clock time (``time.time()`` seconds) the session expires if left idle from now."""
        return time.time() + max(0.0, entry.last_used + self.ttl_s - self._clock())

    # ------------------------------------------------------------------ state
    @property
    def bytes(self) -> int:
        """Bytes of the held sessions and of those being opened."""
        return sum(e.nbytes for e in self._entries.values()) + sum(self._reserved.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._entries

    def stats(self) -> dict:
        """``{"sessions", "bytes", "max_sessions", "max_bytes", "ttl_s", "opened", "closed", "expired",
        "refused"}``."""
        return {
            "sessions": len(self),
            "bytes": self.bytes,
            "max_sessions": self.max_sessions,
            "max_bytes": self.max_bytes,
            "ttl_s": self.ttl_s,
            **self.counters,
        }

    def _expired(self, entry: SessionEntry) -> bool:
        return not entry.lock.locked() and self._clock() - entry.last_used > self.ttl_s

    def _end(self, session_id: str, why: str) -> None:
        del self._entries[session_id]
        self.counters[why] += 1
        self._ended[session_id] = why
        while len(self._ended) > self.max_tombstones:
            self._ended.popitem(last=False)
