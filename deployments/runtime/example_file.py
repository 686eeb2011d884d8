"""The examples file: one collection's labelled example vectors as JSON Lines, to back a collection up
or move it between stores (the embedded Qdrant and a Qdrant server). ``GET /v1/examples/export`` writes
it, ``POST /v1/examples/import`` and ``samgraph examples import`` read it.

One JSON object per line, UTF-8, ``\\n`` after each; a ``type`` on every line::

    {"type": "header", "format": "samgraph-examples", "version": 1, "collection": "pets", "dim": 512,
     "distance": "cosine", "embedder": {"id": "open_clip:ViT-B-32:laion2b_s34b_b79k@sha256:<hex>",
                                         "model_id": "ViT-B-32/laion2b_s34b_b79k", "weights": "sha256:<hex>"}}
    {"type": "point", "id": "<UUID>", "label": "cat", "vector": [0.0123, ...], "payload": {"image_id": ...}}
    ...
    {"type": "end", "points": 2}

- ``header`` (line 1): the format and its ``version`` (this module reads and writes 1), the collection's
  name, its vector dimension and distance (always cosine), and the embedder that made its vectors:
  ``id`` is its identity (:func:`models.embedders.embedder_identity`, the collection's recorded one),
  ``model_id`` and ``weights`` are for people. An import is refused (409 ``embedder_mismatch``) unless
  the file's identity (:attr:`ExampleHeader.embedder_id`) is the importing service's. Files written before
  the identity was recorded (``embedder`` ``null``, or without ``id``) have one only when their
  ``weights`` is a ``sha256:`` digest (open_clip was then the only family, so ``model_id`` and
  ``weights`` name it); others (random weights, no embedder) are refused, since nothing says what made
  their vectors.
- ``point``: an example: its id (a UUID string, kept on import, so importing twice stores each example
  once), label (1-100 characters), ``dim`` floats (as stored: Qdrant keeps cosine vectors L2-normalised)
  and its payload without ``label`` (``image_id``, ``bbox_xyxy``, ``area_px`` for examples added over HTTP).
  A vector is written as float32 values widened to float64, whose shortest repr reads back to the same
  float32, so a round trip is exact.
- ``end`` (last line): how many ``point`` lines came before it. A file without it is refused as truncated.

:class:`ExampleFileReader` checks a file line by line (a typed :class:`deployments.errors.InvalidRequest`
naming ``line N.<key>`` at the first fault); :func:`read_examples` gathers one into :class:`Examples`.
Pure: JSON and numpy, no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from deployments.errors import InvalidRequest
from deployments.runtime.store_checks import MAX_DIM, as_vectors, check_collection_name, check_label, check_point_id
from models.embedders import embedder_identity, parse_identity

FORMAT = "samgraph-examples"
VERSION = 1
#: Media type of the file over HTTP.
MEDIA_TYPE = "application/x-ndjson"
_POINT_KEYS = {"type", "id", "label", "vector", "payload"}
#: Longest embedder identity a header may hold.
MAX_EMBEDDER_CHARS = 300
_HEADER_KEYS = {"type", "format", "version", "collection", "dim", "distance", "embedder"}


@dataclass(frozen=True)
class Examples:
    """Labelled example vectors with their ids: a page of a collection, or the points of a file.

    Attributes:
        ids: N point ids, UUID strings.
        vectors: (N, D) float32 embeddings.
        labels: N labels.
        payloads: N dicts of extra fields, without ``"label"``.

    Raises:
        ValueError: the four differ in length, or ``vectors`` is not 2-D.
    """

    ids: list[str]
    vectors: np.ndarray
    labels: list[str]
    payloads: list[dict]

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be (N, D); got shape {self.vectors.shape}")
        n = len(self.ids)
        if not (len(self.vectors) == len(self.labels) == len(self.payloads) == n):
            raise ValueError(
                f"ids, vectors, labels and payloads differ in length: {n}, {len(self.vectors)}, "
                f"{len(self.labels)}, {len(self.payloads)}"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, dim: int) -> Examples:
        """No examples, of dimension ``dim``."""
        return cls([], np.zeros((0, dim), np.float32), [], [])


@dataclass(frozen=True)
class ExampleHeader:
    """The header line of an examples file.

    Attributes:
        collection: the collection it was exported from.
        dim: vector dimension D.
        embedder: ``{"id", "model_id", "weights"}`` of the embedder that made its vectors (files written
            before identities were recorded: ``{"model_id", "weights"}``), or None.
        version: format version.
    """

    collection: str
    dim: int
    embedder: dict | None = None
    version: int = VERSION

    @property
    def embedder_id(self) -> str | None:
        """The identity of the embedder that made the file's vectors: ``embedder["id"]``; for an older
        file, the open_clip identity its ``model_id`` and ``sha256:`` ``weights`` name; else None (unknown).
        """
        if not self.embedder:
            return None
        if isinstance(self.embedder.get("id"), str):
            return self.embedder["id"]
        model_id, weights = self.embedder.get("model_id"), self.embedder.get("weights")
        if not (isinstance(model_id, str) and isinstance(weights, str) and weights.startswith("sha256:")):
            return None
        model_name, _, pretrained = model_id.partition("/")
        try:
            return embedder_identity("open_clip", model_name, pretrained, weights)
        except ValueError:
            return None

    def record(self) -> dict:
        """The header as its JSON object."""
        return {
            "type": "header",
            "format": FORMAT,
            "version": self.version,
            "collection": self.collection,
            "dim": self.dim,
            "distance": "cosine",
            "embedder": self.embedder,
        }


def header_embedder(identity: str) -> dict:
    """The header's ``embedder`` object for an identity: ``{"id", "model_id", "weights"}`` (``weights``
    ``"random"`` for random weights, as the service reports them); ``{"id"}`` alone for an identity of a
    family this service does not know."""
    try:
        parts = parse_identity(identity)
    except ValueError:
        return {"id": identity}
    model_id = f"{parts['model_name']}/{parts['pretrained']}" if parts["pretrained"] else parts["model_name"]
    weights = "random" if parts["weights"].startswith("random:") else parts["weights"]
    return {"id": identity, "model_id": model_id, "weights": weights}


def encode_line(record: dict) -> bytes:
    """One record as a line of the file (compact JSON, ``\\n``-terminated UTF-8)."""
    return (json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n").encode()


def point_lines(page: Examples) -> bytes:
    """The ``point`` lines of a page, concatenated.

    Args:
        page: the examples; ``vectors`` (N, D) float32.
    """
    wide = np.asarray(page.vectors, np.float32).astype(np.float64).tolist()  # exact: every float32 is a float64
    return b"".join(
        encode_line({"type": "point", "id": pid, "label": label, "vector": vec, "payload": payload})
        for pid, label, vec, payload in zip(page.ids, page.labels, wide, page.payloads)
    )


def end_line(points: int) -> bytes:
    """The ``end`` line after ``points`` point lines."""
    return encode_line({"type": "end", "points": int(points)})


def export_lines(header: ExampleHeader, pages: Iterable[Examples]) -> Iterator[bytes]:
    """The whole file, a chunk per page: the header, each page's point lines, then the end line."""
    yield encode_line(header.record())
    n = 0
    for page in pages:
        n += len(page)
        yield point_lines(page)
    yield end_line(n)


def _fail(lineno: int, key: str | None, message: str) -> InvalidRequest:
    where = f"line {lineno}" + (f".{key}" if key else "")
    return InvalidRequest(f"{where}: {message}"[:300], where)


@dataclass
class ExampleFileReader:
    """Checks an examples file line by line; the points come out one by one, so a file of any size can
    be checked in constant memory (but for the set of ids seen, to refuse duplicates).

    Feed every line (blank lines are skipped), then call :meth:`finish`::

        reader = ExampleFileReader()
        for line in lines:
            point = reader.feed(line)  # (id, (D,) float32 vector, label, payload), or None
        reader.finish()

    Args:
        max_points: refuse more point lines than this (None: no limit).

    Raises (from :meth:`feed` and :meth:`finish`):
        InvalidRequest: 422 naming ``line N.<key>``: not JSON or not an object, a first line that is not
            the header, an unknown ``format`` or ``version``, a bad ``dim``, ``distance`` or
            ``collection``, an unknown ``type`` or key, a point whose ``id`` is not a UUID or repeats an
            earlier one, a bad ``label``, a vector of the wrong length or with non-numbers, non-finite
            values or all zeros, a payload that is not an object or holds ``label``, lines after
            ``end``, an ``end`` whose count differs, or no ``end`` at all.
    """

    max_points: int | None = None
    header: ExampleHeader | None = None
    points: int = 0
    _lineno: int = 0
    _ended: bool = False
    _seen: dict[str, int] = field(default_factory=dict)

    def feed(self, line: bytes | str) -> tuple[str, np.ndarray, str, dict] | None:
        """Check the next line; a point line's ``(id, (D,) float32 vector, label, payload)``, else None."""
        self._lineno += 1
        n = self._lineno
        text = line.decode("utf-8", "replace") if isinstance(line, (bytes, bytearray)) else line
        if not text.strip():
            return None
        if self._ended:
            raise _fail(n, None, "no lines may follow the end line")
        try:
            rec = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise _fail(n, None, f"not valid JSON: {e}") from None
        if not isinstance(rec, dict):
            raise _fail(n, None, "each line must be a JSON object")
        kind = rec.get("type")
        if self.header is None:
            if kind != "header":
                raise _fail(n, "type", f"the first line must be the header (type 'header'); got {kind!r}")
            self.header = self._header(n, rec)
            return None
        if kind == "point":
            return self._point(n, rec)
        if kind == "end":
            count = rec.get("points")
            if set(rec) != {"type", "points"} or isinstance(count, bool) or not isinstance(count, int):
                raise _fail(n, "points", "the end line is {\"type\": \"end\", \"points\": <int>}")
            if count != self.points:
                raise _fail(n, "points", f"the end line counts {count} points, the file holds {self.points}")
            self._ended = True
            return None
        raise _fail(n, "type", f"type must be 'point' or 'end' after the header; got {kind!r}")

    def finish(self) -> ExampleHeader:
        """The header, once every line was fed.

        Raises:
            InvalidRequest: no header, or no end line (a truncated file).
        """
        if self.header is None:
            raise _fail(1, None, "the file is empty; it must start with the header line")
        if not self._ended:
            raise _fail(self._lineno + 1, None, f"no end line after {self.points} points: the file is truncated")
        return self.header

    def _header(self, n: int, rec: dict) -> ExampleHeader:
        unknown = sorted(set(rec) - _HEADER_KEYS)
        if unknown:
            raise _fail(n, unknown[0], "unknown key of the header")
        if rec.get("format") != FORMAT:
            raise _fail(n, "format", f"must be {FORMAT!r}; got {rec.get('format')!r}")
        version = rec.get("version")
        if version != VERSION or isinstance(version, bool):
            raise _fail(n, "version", f"version {version!r} is not supported; this service reads version {VERSION}")
        dim = rec.get("dim")
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
            raise _fail(n, "dim", f"must be an integer in 1..{MAX_DIM}; got {dim!r}")
        if rec.get("distance", "cosine") != "cosine":
            raise _fail(
                n, "distance", f"must be 'cosine' (the only distance samgraph stores); got {rec.get('distance')!r}"
            )
        try:
            collection = check_collection_name(rec.get("collection"))
        except InvalidRequest as e:
            raise _fail(n, "collection", e.message) from None
        embedder = rec.get("embedder")
        if embedder is not None and not isinstance(embedder, dict):
            raise _fail(n, "embedder", "must be an object or null")
        identity = (embedder or {}).get("id")
        if identity is not None and not (isinstance(identity, str) and 1 <= len(identity) <= MAX_EMBEDDER_CHARS):
            raise _fail(n, "embedder", f"id must be a string of 1-{MAX_EMBEDDER_CHARS} characters; got {identity!r}")
        return ExampleHeader(collection, dim, embedder, version)

    def _point(self, n: int, rec: dict) -> tuple[str, np.ndarray, str, dict]:
        assert self.header is not None
        unknown = sorted(set(rec) - _POINT_KEYS)
        if unknown:
            raise _fail(n, unknown[0], "unknown key of a point")
        if self.max_points is not None and self.points >= self.max_points:
            raise _fail(n, None, f"more than {self.max_points} points")
        try:
            pid = check_point_id(rec.get("id"))
            label = check_label(rec.get("label"))
        except InvalidRequest as e:
            raise _fail(n, e.field, e.message) from None
        if pid in self._seen:
            raise _fail(n, "id", f"id {pid} repeats line {self._seen[pid]}")
        vector = rec.get("vector")
        dim = self.header.dim
        if not isinstance(vector, list) or len(vector) != dim:
            got = f"{len(vector)} values" if isinstance(vector, list) else type(vector).__name__
            raise _fail(n, "vector", f"must be a list of {dim} numbers (the header's dim); got {got}")
        try:
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vector)
        except OverflowError:  # an integer beyond any float
            numbers = False
        if not numbers:
            raise _fail(n, "vector", "must hold finite numbers only")
        try:
            row = as_vectors(np.asarray([vector], np.float64), "vector")[0]
        except InvalidRequest as e:  # all zeros, or past float32's range (inf once narrowed)
            raise _fail(n, "vector", e.message) from None
        payload = rec.get("payload", {})
        if not isinstance(payload, dict) or "label" in payload:
            raise _fail(n, "payload", "must be an object without the key 'label'")
        self._seen[pid] = n
        self.points += 1
        return pid, row, label, payload


def read_examples(lines: Iterable[bytes | str], max_points: int | None = None) -> tuple[ExampleHeader, Examples]:
    """A whole examples file (or a chunk of one: a header, points and an end line), checked.

    Args:
        lines: the file's lines (``bytes.splitlines()`` of a body, or an open file).
        max_points: refuse more point lines than this.

    Returns:
        (header, examples): the examples' vectors are (N, header.dim) float32.

    Raises:
        InvalidRequest: as :class:`ExampleFileReader`.
    """
    reader = ExampleFileReader(max_points=max_points)
    ids, rows, labels, payloads = [], [], [], []
    for line in lines:
        point = reader.feed(line)
        if point is not None:
            ids.append(point[0])
            rows.append(point[1])
            labels.append(point[2])
            payloads.append(point[3])
    header = reader.finish()
    vectors = np.stack(rows).astype(np.float32) if rows else np.zeros((0, header.dim), np.float32)
    return header, Examples(ids, vectors, labels, payloads)
