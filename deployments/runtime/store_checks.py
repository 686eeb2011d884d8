"""Rules of the example store's inputs (names, labels, ``top_k``, vectors, ids) and where the store is.

Pure checks without Qdrant, so the Retriever and the ingress apply the same rules; each failure is a typed
:class:`deployments.errors.InvalidRequest` (a ``ValueError``) naming the field.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deployments.errors import DimensionMismatch, EmbedderMismatch, InvalidRequest


class StoreError(RuntimeError):
    """The store cannot be opened or used (unwritable data dir, folder locked by another client, closed)."""


COLLECTION_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_LABEL_CHARS = 100
MAX_TOP_K = 100
MAX_PAGE = 1000
MAX_DIM = 65536


def check_collection_name(name: str) -> str:
    """Return ``name`` if it is 1-64 characters of ``[A-Za-z0-9_-]``.

    Raises:
        ValueError: otherwise.
    """
    if not isinstance(name, str) or not COLLECTION_NAME_RE.fullmatch(name):
        raise InvalidRequest(
            f"collection name must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'; got {name!r}", "collection"
        )
    return name


def check_label(label: str) -> str:
    """Return ``label`` stripped of surrounding whitespace if it is then 1-100 characters.

    Raises:
        ValueError: not a string, empty after stripping, or longer than 100 characters.
    """
    if not isinstance(label, str):
        raise InvalidRequest(f"label must be a string; got {type(label).__name__}", "label")
    stripped = label.strip()
    if not 1 <= len(stripped) <= MAX_LABEL_CHARS:
        raise InvalidRequest(
            f"label must be 1-{MAX_LABEL_CHARS} characters after stripping whitespace; got {label!r}", "label"
        )
    return stripped


def check_top_k(top_k: int) -> int:
    """Return ``top_k`` if it is an integer in 1..100.

    Raises:
        ValueError: otherwise.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= MAX_TOP_K:
        raise InvalidRequest(f"top_k must be an integer in 1..{MAX_TOP_K}; got {top_k!r}", "top_k")
    return int(top_k)


def as_vectors(x: np.ndarray, what: str = "vectors", dim: int | None = None) -> np.ndarray:
    """Validate a batch of embedding vectors.

    Args:
        x: (N, D) float array; finite, no all-zero rows (a zero vector has no cosine direction).
        what: name used in error messages (``"vectors"``, ``"queries"``).
        dim: the dimension D must equal, or None for any.

    Returns:
        (N, D) float32 C-contiguous array.

    Raises:
        ValueError: not 2-D, not numeric, non-finite values or zero rows.
        DimensionMismatch: ``D != dim``.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise InvalidRequest(f"{what} must be a 2-D (N, D) array; got shape {x.shape}", what)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InvalidRequest(f"{what} must be a float array; got dtype {x.dtype}", what)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not 1 <= x.shape[1] <= MAX_DIM:
        raise InvalidRequest(f"{what} must have 1..{MAX_DIM} columns; got {x.shape[1]}", what)
    if dim is not None and x.shape[1] != dim:
        raise DimensionMismatch(f"{what} are {x.shape[1]}-d, the collection holds {dim}-d vectors")
    if not np.all(np.isfinite(x)):
        raise InvalidRequest(f"{what} hold non-finite values (nan or inf)", what)
    zero = np.flatnonzero(~np.any(x != 0, axis=1))
    if zero.size:
        raise InvalidRequest(f"{what} rows {zero[:10].tolist()} are all zero and have no cosine direction", what)
    return x


def check_embedder(collection: str, held: str | None, given: str | None, what: str = "vectors") -> None:
    """Refuse ``what`` made by the embedder ``given`` for a collection that records the embedder ``held``.

    Args:
        collection: the collection's name (for the message).
        held: the identity the collection records, or None (none recorded: nothing to check).
        given: the identity of the embedder that made the vectors, or None (not told: nothing to check).
        what: ``"vectors"``, ``"queries"`` or ``"the file's vectors"``, for the message.

    Raises:
        EmbedderMismatch: both known and different; the message names both.
    """
    if held is not None and given is not None and held != given:
        raise EmbedderMismatch(
            f"collection {collection!r} holds vectors of embedder {held}; {what} of embedder {given} are not "
            "comparable with them (even at the same dimension)"
        )


def check_point_id(point_id: str, what: str = "id") -> str:
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError:
        raise InvalidRequest(f"{what} must be a UUID string; got {point_id!r}", what) from None


def check_point_ids(ids: Sequence[str] | None, n: int) -> list[str]:
    """The ids of ``n`` examples: ``ids`` checked (n distinct UUID strings, returned in canonical form), or
    n new UUID4 strings when ``ids`` is None.

    Raises:
        InvalidRequest: a single string, a count other than ``n``, a non-UUID or a repeated id.
    """
    if ids is None:
        return [str(uuid.uuid4()) for _ in range(n)]
    if isinstance(ids, str) or len(ids) != n:
        got = "a single string" if isinstance(ids, str) else f"{len(ids)} ids"
        raise InvalidRequest(f"need one id per vector; got {n} vectors and {got}", "ids")
    out = [check_point_id(i, f"ids[{k}]") for k, i in enumerate(ids)]
    if len(set(out)) != n:
        raise InvalidRequest("ids must be distinct", "ids")
    return out


def example_payloads(labels: Sequence[str], payloads: Sequence[dict] | None, n: int) -> list[dict]:
    """The Qdrant payloads of ``n`` new examples: ``{"label": <stripped label>, **extra}`` each.

    Args:
        labels: n class labels, each 1-100 characters after stripping.
        payloads: n JSON-serialisable dicts of extra fields without the key ``"label"``, or None.
        n: how many vectors are stored (>= 1).

    Raises:
        InvalidRequest: a single string for ``labels``, counts that differ from ``n``, a bad label or
            payload.
    """
    if isinstance(labels, str):
        raise InvalidRequest("labels must be a sequence of strings, one per vector, not a single string", "labels")
    labels = [check_label(label) for label in labels]
    if len(labels) != n or n == 0:
        raise InvalidRequest(
            f"need one label per vector and at least one vector; got {n} vectors, {len(labels)} labels", "labels"
        )
    if payloads is None:
        payloads = [{}] * n
    if len(payloads) != n:
        raise InvalidRequest(f"need one payload per vector; got {n} vectors, {len(payloads)} payloads", "payloads")
    bodies = []
    for i, extra in enumerate(payloads):
        if not isinstance(extra, dict) or "label" in extra:
            raise InvalidRequest(f"payloads[{i}] must be a dict without the key 'label'", f"payloads[{i}]")
        try:
            json.dumps(extra)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"payloads[{i}] is not JSON-serialisable: {exc}", f"payloads[{i}]") from None
        bodies.append({"label": labels[i], **extra})
    return bodies


def store_settings(path: str | None = None, url: str | None = None, api_key: str | None = None) -> dict:
    """Which store to open: the given settings over the environment's.

    A ``url`` (or ``SAMGRAPH_QDRANT_URL``, with ``SAMGRAPH_QDRANT_API_KEY``) names a Qdrant server;
    otherwise the local mode in ``path``, by default ``$SAMGRAPH_DATA_DIR/qdrant`` (``SAMGRAPH_DATA_DIR``
    defaults to ``~/.local/share/samgraph``).

    Returns:
        Keyword arguments of :class:`deployments.runtime.vectorstore.ExampleStore`: ``{"url", "api_key"}``
        or ``{"path"}`` (user folder expanded).
    """
    url = url or os.environ.get("SAMGRAPH_QDRANT_URL") or None
    if url:
        return {"url": url, "api_key": api_key or os.environ.get("SAMGRAPH_QDRANT_API_KEY") or None}
    if path is None:
        path = str(Path(os.environ.get("SAMGRAPH_DATA_DIR") or "~/.local/share/samgraph") / "qdrant")
    return {"path": str(Path(path).expanduser())}


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove it writable by making a temporary file in it.

    Raises:
        StoreError: naming the folder and the OS error.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise StoreError(f"data dir {folder} is not writable: {exc}") from exc


def preflight_store(path: str | None = None, url: str | None = None, api_key: str | None = None) -> dict:
    """Resolve the store settings as :meth:`ExampleStore.from_env` would, and fail fast on a data dir
    that cannot be written (before any replica starts). Opens no client (the local mode locks its folder).

    Returns:
        Keyword arguments for the ``Retriever`` deployment: ``{"url", "api_key"}`` or ``{"path"}``.

    Raises:
        StoreError: the data dir is not writable.
    """
    settings = store_settings(path, url, api_key)
    if "path" in settings:
        check_writable(Path(settings["path"]))
    return settings
