"""A 3-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and two worker raylets) and
the placement of samgraph's deployments on it. ``tests/e2e/test_cluster.py`` and
``benchmarks/cluster_interactive.py`` share it, so the test proves what the benchmark measures.

Placement, by custom resources: the proxy, encoder, fader, embedder, retriever and video segmenter on the
head; 2 ``Ingress`` replicas on the head and worker A; 2 ``MaskDecoder`` replicas on workers A and B (one
per node).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

HEAD, WORKER_A, WORKER_B = "head_node", "worker_a", "worker_b"
#: Worker B's resources; a replacement node for B is added with the same.
WORKER_B_RESOURCES = {WORKER_B: 1, "maskdecoder_slot": 1}


@contextlib.contextmanager
def three_nodes() -> Iterator[tuple]:
    """(the cluster, worker B's node: what ``cluster.remove_node`` takes). Head: 2 logical CPUs, workers:
    1 each. Shut down afterwards."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {HEAD: 1, "ingress_slot": 1}})
    try:
        cluster.add_node(num_cpus=1, resources={WORKER_A: 1, "ingress_slot": 1, "maskdecoder_slot": 1})
        node_b = cluster.add_node(num_cpus=1, resources=WORKER_B_RESOURCES)
        cluster.wait_for_nodes()
        yield cluster, node_b
    finally:
        cluster.shutdown()


def two_of_each(config: dict) -> dict:
    """``config`` with 2 fixed (not autoscaled) ``Ingress`` and ``MaskDecoder`` replicas (changed in place)."""
    for d in config["applications"][0]["deployments"]:
        if d["name"] in ("Ingress", "MaskDecoder"):
            d.pop("autoscaling_config", None)
            d["num_replicas"] = 2
    return config


def place(config: dict, env_vars: dict[str, str]) -> dict:
    """A Serve config (configs/serve.yaml's shape) laid out on :func:`three_nodes`: a head-only proxy,
    2 fixed ``Ingress`` and ``MaskDecoder`` replicas on their slots, everything else on the head; the
    app's ``env_vars`` travel in its ``runtime_env`` (the raylets were not started by `serve run`)."""
    config["proxy_location"] = "HeadOnly"
    app = config["applications"][0]
    app["runtime_env"] = {"env_vars": dict(env_vars)}
    for d in two_of_each(config)["applications"][0]["deployments"]:
        opts = d.setdefault("ray_actor_options", {})
        if d["name"] in ("Ingress", "MaskDecoder"):
            d["max_replicas_per_node"] = 1
            opts["resources"] = {f"{d['name'].lower()}_slot": 1}
        else:
            opts["resources"] = {HEAD: 0.01}
    return config


def node_names() -> dict[str, str]:
    """Node id -> ``HEAD``, ``WORKER_A`` or ``WORKER_B`` for the alive nodes (needs a connected driver)."""
    import ray

    return {n["NodeID"]: next(k for k in (HEAD, WORKER_A, WORKER_B) if k in n["Resources"]) for n in ray.nodes() if n["Alive"]}
