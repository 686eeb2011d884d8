"""Key-affine request routing: Ray Serve's ``ConsistentHashRouter`` with one fix for concurrent calls.

Every call about an image (or later a video session) goes to ``handle.options(session_id=key)`` of a
deployment whose ``request_router_config`` names :class:`KeyAffinityRouter`. Ray's
``ray.serve.experimental.consistent_hash_router.ConsistentHashRouter`` places each key on a hash ring of
the live replicas (100 virtual nodes each, MurmurHash3 with a fixed seed), so every router in the
cluster sends a key to the same replica, and adding or removing a replica moves only the keys of the
arcs it gains or loses.

Why a subclass: in Ray 2.60 the router hangs when one caller has two or more calls in flight at once.
Serve gives every call made while handling one request the parent's ``internal_request_id``
(``ray.serve._private.default_impl.get_request_metadata``), and the router's base class indexes pending
calls by that id, keeping only the first (``RequestRouter._add_pending_request_to_indices``). The
consistent-hash router fulfils a call only through that index (``_fulfill_next_pending_request``; it
deliberately drops the FIFO fallback that the default router has), so the second and later calls of one
ingress request never get a replica. Measured here: a replica gathering 2 calls with distinct, equal or
no ``session_id`` hung until its 20 s timeout; one at a time they all answered. The fix fulfils exactly
the call the routing task chose the replica for (the one whose metadata object it holds), which is what
the router means to do. ``tests/integration/test_affinity_router.py`` fails if it regresses.

Fallback: samgraph deploys it with ``num_fallback_replicas: 0`` (strict affinity). A call waits for its
key's owner (queued in the caller's router) rather than going to a replica that does not hold the key;
see ``docs/operations.md`` for why.
"""

from __future__ import annotations

import bisect

from ray.serve.experimental.consistent_hash_router import DEFAULT_NUM_VIRTUAL_NODES, ConsistentHashRouter, _hash_bytes

ROUTER_CLASS = "deployments.runtime.affinity.KeyAffinityRouter"
"""The import path Serve configs give as ``request_router_class``."""


class KeyAffinityRouter(ConsistentHashRouter):
    """``ConsistentHashRouter`` that also routes concurrent calls sharing one parent request.

    The ring, the key (``session_id``, else the call's ``internal_request_id``), the fallback walk and
    the ``request_router_kwargs`` (``num_virtual_nodes``, ``num_fallback_replicas``) are the parent's.
    """

    def _fulfill_next_pending_request(self, replica, request_metadata=None) -> None:
        """Give ``replica`` to the pending call whose metadata is ``request_metadata`` (by identity).

        The routing loop passes the metadata object of the call it popped, so identity picks that call
        even when other pending calls share its ``internal_request_id``. A call already done (cancelled,
        or routed) is left alone, as in the parent.
        """
        for pending in self._pending_requests_to_fulfill:
            if pending.metadata is request_metadata and not pending.future.done():
                self._record_queue_wait_time(pending)
                pending.future.set_result(replica)
                if self._pending_requests_by_id.get(pending.metadata.internal_request_id) is pending:
                    self._remove_pending_request_from_indices(pending)
                return


def owner_of(key: str, replica_ids: list[str], num_virtual_nodes: int = DEFAULT_NUM_VIRTUAL_NODES) -> str:
    """The replica (unique id, as ``/v1/stats`` lists them) that the router sends ``key`` to, with
    strict affinity, when ``replica_ids`` are the live replicas: the ring walk of
    ``ConsistentHashRouter._lookup_ranked_replicas``, same hash, seed and virtual nodes.

    Raises:
        ValueError: no replicas.
    """
    if not replica_ids:
        raise ValueError("replica_ids: give at least one replica")
    ring = sorted((_hash_bytes(f"{r}:{i}".encode()), r) for r in replica_ids for i in range(num_virtual_nodes))
    at = bisect.bisect_right([h for h, _ in ring], _hash_bytes(key.encode()))
    return ring[at % len(ring)][1]
