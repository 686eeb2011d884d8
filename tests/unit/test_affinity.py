"""owner_of names the replica that Ray's consistent-hash ring gives a key, and a replica change moves only
the keys of the arcs it gains or loses."""

from __future__ import annotations

import pytest

from deployments.runtime.affinity import owner_of

KEYS = [f"image-{i}" for i in range(400)]


def _router_owners(replica_ids: list[str]) -> dict[str, str]:
    """The owners that ConsistentHashRouter's own ring walk gives (the upstream reference)."""
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

    router = ConsistentHashRouter.__new__(ConsistentHashRouter)  # the ring only: no controller, no loop
    router._deployment_id = DeploymentID(name="MaskDecoder", app_name="samgraph")
    router._num_virtual_nodes, router._num_fallback_replicas = 100, 0
    router._rebuild_ring(frozenset(ReplicaID(unique_id=r, deployment_id=router._deployment_id) for r in replica_ids))
    return {k: router._lookup_ranked_replicas(k)[0].unique_id for k in KEYS}


@pytest.mark.parametrize("replicas", [["a1b2c3d4"], ["a1b2c3d4", "zz9q8r7s"], ["a1b2c3d4", "zz9q8r7s", "m3n4o5p6"]])
def test_owner_of_matches_the_router(replicas):
    assert {k: owner_of(k, replicas) for k in KEYS} == _router_owners(replicas)


def test_adding_a_replica_moves_only_keys_to_it():
    two, three = ["a1b2c3d4", "zz9q8r7s"], ["a1b2c3d4", "zz9q8r7s", "m3n4o5p6"]
    moved = [k for k in KEYS if owner_of(k, two) != owner_of(k, three)]
    assert moved and all(owner_of(k, three) == "m3n4o5p6" for k in moved)
    assert 0.2 < len(moved) / len(KEYS) < 0.5  # about a third


def test_no_replicas_is_an_error():
    with pytest.raises(ValueError, match="replica_ids"):
        owner_of("k", [])
