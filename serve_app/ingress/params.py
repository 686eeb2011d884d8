"""Query and path parameters of the ``/v1/examples`` routes (and of export and import) and of the video
session routes, with the rules the retriever enforces, for
FastAPI to validate (422 naming the parameter) and to describe in ``/openapi.json``.

Each has ``openapi_examples``: without them FastAPI writes ``"example": {}`` into the document a replica
serves (its "unset" sentinel does not survive Serve pickling the app, and FastAPI compares it by identity).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from serve_app.ingress.request_examples import EXAMPLE_COLLECTION, EXAMPLE_ID, EXAMPLE_SESSION_ID
from serve_app.ingress.schemas import COLLECTION_PATTERN, LABEL_MAX_CHARS


def _example(value) -> dict:
    return {"example": {"value": value}}


CollectionQuery = Annotated[
    str,
    Query(
        pattern=COLLECTION_PATTERN, description="the collection's name", openapi_examples=_example(EXAMPLE_COLLECTION)
    ),
]
TargetCollectionQuery = Annotated[
    str | None,
    Query(
        pattern=COLLECTION_PATTERN,
        description="the collection to import into (default: the file's)",
        openapi_examples=_example(EXAMPLE_COLLECTION),
    ),
]
LabelQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=LABEL_MAX_CHARS,
        description="only this label's examples",
        openapi_examples=_example("square"),
    ),
]
OffsetQuery = Annotated[
    str | None,
    Query(
        description="the previous page's next_offset (an example id)",
        json_schema_extra={"format": "uuid"},
        openapi_examples=_example(EXAMPLE_ID),
    ),
]
LimitQuery = Annotated[int, Query(ge=1, le=1000, description="ids per page", openapi_examples=_example(100))]
ExampleIdPath = Annotated[
    str,
    Path(
        description="the example's id, as POST /v1/examples returned it",
        json_schema_extra={"format": "uuid"},
        openapi_examples=_example(EXAMPLE_ID),
    ),
]
SessionIdPath = Annotated[
    str,
    Path(
        description="the session's id, as POST /v1/video/sessions answers it (32 hex digits)",
        openapi_examples=_example(EXAMPLE_SESSION_ID),
    ),
]
ObjIdPath = Annotated[int, Path(description="the object's id in the session", openapi_examples=_example(1))]
MaskFormatQuery = Annotated[str, Query(description="rle, png, polygon or none", openapi_examples=_example("rle"))]
