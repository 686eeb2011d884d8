"""SIGKILL of the Retriever replica (embedded Qdrant) while examples are being added and a collection is
being imported: every example whose POST got a 200 is there afterwards, whole, with the vector its box
embeds to; no stored point is half-written; a request during the kill is answered (a slow 200, or a 503
with ``Retry-After`` and the error body), never left hanging; and the service serves on.

What happens: the ingress fixes each new example's id before the write, and retries a store call once
when its replica died (:func:`serve_app.ingress.example_transfer.retry_if_replica_died`); Serve routes
the retry to the replacement, which reopens the store (the kernel dropped the dead process's lock).
"""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
import uuid

import httpx
import numpy as np

from deployments.runtime.example_file import ExampleHeader, Examples, export_lines, read_examples
from tests.conftest import TRUCK_BOX

ADDERS, ADDS_EACH = 3, 8
IMPORTED = 500  # 512-d examples: a few seconds of committed writes in the retriever, the kill lands in them
DIM = 512
NDJSON = {"content-type": "application/x-ndjson"}


def retriever_replica() -> tuple[str, int]:
    """(actor name, pid) of the live Retriever replica."""
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if "#Retriever#" in a["name"]]
    assert len(names) == 1, names
    actor = ray.get_actor(names[0]["name"], namespace=names[0]["namespace"])
    return names[0]["name"], ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=60)


def box(k: int) -> list[int]:
    """The k-th example's box: TRUCK_BOX with its left edge moved, so that every crop differs."""
    return [TRUCK_BOX[0] + 9 * k, TRUCK_BOX[1], TRUCK_BOX[2], TRUCK_BOX[3]]


def export(client, collection: str) -> Examples:
    r = client.get("/v1/examples/export", params={"collection": collection})
    assert r.status_code == 200, r.text
    header, examples = read_examples(r.content.splitlines())
    assert header.dim == DIM
    return examples


def add_all(url: str, image_id: str, collection: str, keys: list[int], threads: int, record: list) -> None:
    """POST /v1/examples for each box key from ``threads`` clients; ``record`` gets (key, status, body,
    headers, sent at, answered at) of each."""
    lock = threading.Lock()

    def client_loop(mine: list[int]) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            for k in mine:
                t0 = time.monotonic()
                r = c.post("/v1/examples", json={"image_id": image_id, "box_xyxy": box(k), "label": f"k{k}", "collection": collection})
                answer = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
                with lock:
                    record.append((k, r.status_code, answer, r.headers, t0, time.monotonic()))

    workers = [threading.Thread(target=client_loop, args=(keys[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
        assert not w.is_alive(), "a POST /v1/examples hung"


def test_acknowledged_examples_survive_a_sigkill_of_the_retriever(client, app_url, truck_path):
    t_start = time.monotonic()
    image = {"base64": base64.b64encode(truck_path.read_bytes()).decode()}
    r = client.post("/v1/examples", json={"image": image, "box_xyxy": box(99), "label": "k99", "collection": "kill-adds"})
    assert r.status_code == 200, r.text
    image_id = r.json()["image_id"]  # cached by its owner: the adds below skip the encoder
    rng = np.random.default_rng(7)
    seeded = Examples([str(uuid.uuid4()) for _ in range(IMPORTED)], rng.standard_normal((IMPORTED, DIM)).astype(np.float32), ["seeded"] * IMPORTED, [{"n": i} for i in range(IMPORTED)])
    embedder = {"id": client.get("/readyz").json()["embedder"]["id"]}  # the file is the service embedder's
    body = b"".join(export_lines(ExampleHeader("kill-import", DIM, embedder), [seeded]))
    name, pid = retriever_replica()

    imported: list = []

    def import_all() -> None:
        imported.append(httpx.post(f"{app_url}/v1/examples/import", content=body, headers=NDJSON, timeout=300))
        imported.append(time.monotonic())

    record: list = []
    adders = threading.Thread(target=add_all, args=(app_url, image_id, "kill-adds", list(range(ADDERS * ADDS_EACH)), ADDERS, record))
    adders.start()
    deadline = time.monotonic() + 120
    while len(record) < ADDERS:  # adds flowing through every stage
        assert time.monotonic() < deadline and adders.is_alive()
        time.sleep(0.05)
    importer = threading.Thread(target=import_all)
    importer.start()
    while True:  # kill once the import is seen part-way: the retriever is writing, adds wait on its lock
        r_import = client.get("/v1/examples", params={"collection": "kill-import", "limit": 1})
        if r_import.status_code == 200 and r_import.json()["total"] > 0:
            break
        assert time.monotonic() < deadline and importer.is_alive()
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    adders.join(timeout=400)
    importer.join(timeout=300)
    assert not adders.is_alive() and not importer.is_alive(), "a request hung"

    # the service serves on, on a new replica that reopened the store
    new_name, new_pid = retriever_replica()
    assert (new_name, new_pid) != (name, pid)
    assert client.get("/readyz").status_code == 200
    after = client.post("/v1/examples", json={"image_id": image_id, "box_xyxy": box(98), "label": "k98", "collection": "kill-adds"})
    assert after.status_code == 200, after.text

    acked = {rec[2]["ids"][0]: rec[0] for rec in record if rec[1] == 200}
    failed = [rec for rec in record if rec[1] != 200]
    for k, status, answer, headers, *_ in failed:  # the only other answer: 503 with the error body and Retry-After
        assert status == 503 and answer["error"]["code"] in ("unavailable", "overloaded") and "retry-after" in headers, (k, status, answer)
    acked[r.json()["ids"][0]] = 99
    acked[after.json()["ids"][0]] = 98

    stored = export(client, "kill-adds")
    listing = client.get("/v1/examples", params={"collection": "kill-adds", "limit": 1000}).json()
    assert listing["total"] == len(stored) == len(set(stored.ids)) == len(listing["items"])  # no point without payload
    assert set(acked) <= set(stored.ids)  # every acknowledged example is there
    assert len(stored) <= len(acked) + len(failed)  # a retried write stored once: no duplicates
    position = {pid_: i for i, pid_ in enumerate(stored.ids)}
    for i in range(len(stored)):  # every stored point whole
        payload = stored.payloads[i]
        assert set(payload) == {"image_id", "bbox_xyxy", "area_px"} and payload["image_id"] == image_id
        assert stored.labels[i].startswith("k") and payload["area_px"] > 0
        assert np.all(np.isfinite(stored.vectors[i])) and abs(float(np.linalg.norm(stored.vectors[i])) - 1) < 1e-5
    for pid_, k in acked.items():
        assert stored.labels[position[pid_]] == f"k{k}"

    # intact vectors: each acknowledged example's box embedded again now, independently, points the same way
    again: list = []
    add_all(app_url, image_id, "kill-check", sorted(acked.values()), 2, again)
    assert all(rec[1] == 200 for rec in again)
    check = export(client, "kill-check")
    fresh = {check.labels[i]: check.vectors[i] for i in range(len(check))}
    for pid_, k in acked.items():
        cosine = float(stored.vectors[position[pid_]] @ fresh[f"k{k}"])
        assert cosine > 0.9999, (k, cosine)

    # the import: answered (a slow 200 after its retry, or a 503 after which a rerun completes it), exactly
    status = imported[0].status_code
    assert status == 200 or (status == 503 and "retry-after" in imported[0].headers), imported[0].text
    part = export(client, "kill-import")
    assert set(part.ids) <= set(seeded.ids)
    if status != 200:
        rerun = client.post("/v1/examples/import", content=body, headers=NDJSON)
        assert rerun.status_code == 200 and rerun.json()["count"] == IMPORTED, rerun.text
    whole = export(client, "kill-import")
    assert len(whole) == IMPORTED
    order = [whole.ids.index(i) for i in seeded.ids]
    assert [whole.payloads[k] for k in order] == seeded.payloads
    np.testing.assert_allclose(whole.vectors[order], seeded.vectors / np.linalg.norm(seeded.vectors, axis=1, keepdims=True), atol=1e-6)

    statuses = sorted({rec[1] for rec in record})
    across = sum(1 for rec in record if rec[4] < t_kill < rec[5])
    print(
        f"\nretriever kill: {len(acked) - 2} of {len(record)} adds acknowledged ({across} sent before the kill and "
        f"answered after it), {len(stored)} stored "
        f"({len(stored) - len(acked)} more than acknowledged), non-200: {[(rec[1], rec[2]['error']['code']) for rec in failed]}, "
        f"statuses {statuses}; the kill at {r_import.json()['total']}/{IMPORTED} imported, the import answered {status} "
        f"{imported[1] - t_kill:+.1f} s after it; "
        f"{time.monotonic() - t_kill:.1f} s from the kill to the end, {time.monotonic() - t_start:.1f} s in all"
    )
