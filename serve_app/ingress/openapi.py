"""``/openapi.json`` with the real request and response bodies.

The POST routes read their bodies themselves (:func:`serve_app.ingress.http.parse_body`: JSON, or
multipart with a file part and an optional ``request`` JSON part), so FastAPI sees no body parameter and
would describe none. Each route declares its bodies instead with :meth:`DescribedAPI.body_spec`
(POST) or :meth:`DescribedAPI.route_spec` (the others), built from the same pydantic models that validate the requests, so the
field limits (``maxLength``, ``maxItems``, ``minimum``/``maximum``, ``pattern``) in the schema are the
ones enforced. Every error status carries the shared ``Error`` component,
``{"error": {"code", "message", "field", "request_id"}}``.

The models referred to are kept on the app (``api.components``, so that they travel with it when Serve
pickles the ingress) and added to FastAPI's generated document as ``components.schemas``; a model's
nested models become components too.

Adding a route::

    @api.post("/v1/things", **api.body_spec(ThingRequest, ok=ThingAdded, errors=(400, 404, 413, 415, 422, 503)))
    @stage_errors
    async def add_thing(self, request: Request) -> dict:
        req, upload = await parse_body(request, ThingRequest, self.args.limits.max_body_bytes)

    @api.get("/v1/things", **api.route_spec(ThingList, 404, 422, 503))

``file_part`` must match ``parse_body``'s; a route that takes no file gives ``file_part=None`` (JSON only).
Give every ``Query``/``Path`` parameter ``openapi_examples``: without them a replica's document gets
``"example": {}`` for it (FastAPI's "unset" sentinel does not survive Serve pickling the app).
``tests/integration/test_openapi_fuzz.py`` checks that the served document is the one built here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

REF = "#/components/schemas/{model}"

#: What each error status means, for every route that can answer it. The body is always ``Error``.
ERROR_DESCRIPTIONS = {
    400: "unreadable body or image: invalid_json, invalid_multipart, invalid_base64, invalid_image, empty_image",
    401: "API keys are set and the request has none, or a wrong one (unauthorized)",
    404: "image_not_cached, unknown_collection, unknown_example, or not_found",
    409: "dimension_mismatch: the collection holds vectors of another dimension",
    413: "body_too_large, image_too_large, or a clip over the frame limits",
    415: "unsupported_media_type: send application/json or multipart/form-data",
    422: "invalid_request (a schema rule; `field` names the field), out_of_image, out_of_clip, empty_mask",
    429: "rate_limited, with Retry-After",
    503: "overloaded or unavailable: a stage cannot take the request now; with Retry-After",
}
#: Answered by every ``/v1`` route when API keys or a rate limit are configured.
ACCESS_ERRORS = (401, 429)
#: The error statuses of a route that reads a body (``parse_body``) and calls the stages.
BODY_ERRORS = (400, 404, 413, 415, 422, 503)


class DescribedAPI(FastAPI):
    """FastAPI whose OpenAPI document also holds the models the routes refer to (:attr:`components`)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        #: JSON schemas of the models the routes refer to, by component name (:meth:`component`).
        self.components: dict[str, dict] = {}

    def component(self, model: type[BaseModel], name: str | None = None, mode: str = "validation") -> dict:
        """Register ``model``'s JSON schema (and those of the models it nests) as components.

        Args:
            model: a pydantic model.
            name: the component name (default: the class name).
            mode: ``validation`` for request bodies, ``serialization`` for answers.

        Returns:
            ``{"$ref": "#/components/schemas/<name>"}``.

        Raises:
            ValueError: another, different schema is registered under one of the names.
        """
        schema = model.model_json_schema(ref_template=REF, mode=mode)
        defs = schema.pop("$defs", {})
        name = name or model.__name__
        for key, value in {**defs, name: schema}.items():
            if self.components.setdefault(key, value) != value:
                raise ValueError(f"two different schemas are named {key!r} in the OpenAPI components")
        return {"$ref": REF.format(model=name)}

    def responses(
        self,
        ok: type[BaseModel] | None,
        *errors: int,
        ok_content: dict[str, Any] | None = None,
        access: bool = True,
        other: dict[int, tuple[str, type[BaseModel]]] | None = None,
    ) -> dict:
        """The ``responses=`` of a route: 200 with ``ok``'s schema, and ``Error`` for each of ``errors``.

        Args:
            ok: the 200 body's model, ``application/json`` (None: only ``ok_content``, or without that
                FastAPI's generic 200).
            errors: error statuses the route answers itself (keys of :data:`ERROR_DESCRIPTIONS`).
            ok_content: more 200 media types, e.g. ``{"application/x-ndjson": {"schema": ...}}``.
            access: add :data:`ACCESS_ERRORS` (every ``/v1`` route).
            other: statuses whose body is not ``Error``: ``{status: (description, model)}``.
        """
        from serve_app.ingress.errors import ErrorBody

        out: dict[int, dict] = {}
        content = {"application/json": {"schema": self.component(ok, mode="serialization")}} if ok is not None else {}
        if content or ok_content:
            out[200] = {"description": "OK", "content": {**content, **(ok_content or {})}}
        error = {"application/json": {"schema": self.component(ErrorBody, "Error", mode="serialization")}}
        for status in sorted({*errors, *(ACCESS_ERRORS if access else ())}):
            out[status] = {"description": ERROR_DESCRIPTIONS[status], "content": error}
        for status, (description, model) in (other or {}).items():
            out[status] = {"description": description, "content": {"application/json": {"schema": self.component(model, mode="serialization")}}}
        return out

    def route_spec(
        self, ok: type[BaseModel] | None, *errors: int, body: dict[str, Any] | None = None, streams: bool = False, **kwargs
    ) -> dict:
        """Keyword arguments of ``@api.get(...)`` and the like: ``responses`` (:meth:`responses`, which
        takes ``kwargs``), and ``response_model=None``, so that FastAPI adds no schema of its own (from
        the return annotation) to the 200.

        Args:
            body: the ``content`` of a request body the route reads itself in a form ``parse_body`` does
                not (e.g. ``{"application/x-ndjson": {"schema": {"type": "string"}}}``); for
                ``parse_body``'s JSON and multipart use :meth:`body_spec`.
            streams: the route answers a ``StreamingResponse`` only (its media types in ``ok_content``),
                so FastAPI adds no ``application/json`` 200 of its own.
        """
        spec = {"responses": self.responses(ok, *errors, **kwargs), "response_model": None}
        if streams:
            spec["response_class"] = StreamingResponse
        if body is not None:
            spec["openapi_extra"] = {"requestBody": {"required": True, "content": body}}
        return spec

    def body_spec(
        self,
        model: type[BaseModel],
        file_part: str | None = "image",
        *,
        ok: type[BaseModel] | None = None,
        errors: tuple[int, ...] = BODY_ERRORS,
        examples: dict[str, dict] | None = None,
        ok_content: dict[str, Any] | None = None,
        streams: bool = False,
    ) -> dict:
        """Keyword arguments of ``@api.post(...)`` for a route that reads its body with ``parse_body``.

        Args:
            model: the body's pydantic model (``parse_body``'s ``model``).
            file_part: the multipart file part's name (``parse_body``'s ``file_part``); None: JSON only.
            ok: the 200 body's model.
            errors: the error statuses the route answers (always with the ``Error`` body); 401 and 429
                are added.
            examples: named JSON bodies, ``{"name": {"summary": ..., "value": {...}}}``, each one a
                request the route accepts.
            ok_content: more 200 media types (see :meth:`responses`).
            streams: see :meth:`route_spec`.

        Returns:
            ``{"openapi_extra": {"requestBody": ...}, **route_spec(...)}``: the body as
            ``application/json`` (the model) and, with a ``file_part``, as ``multipart/form-data`` (the
            file, ``format: binary``, and an optional ``request`` part holding the model as JSON).
        """
        ref = self.component(model)
        json_body: dict[str, Any] = {"schema": ref}
        if examples:
            json_body["examples"] = examples
        content: dict[str, Any] = {"application/json": json_body}
        if file_part is not None:
            content["multipart/form-data"] = {
                "schema": {
                    "type": "object",
                    "required": [file_part],
                    "properties": {
                        file_part: {"type": "string", "format": "binary", "description": f"the {file_part} file"},
                        "request": {**ref, "description": f"the JSON body's other fields (not {file_part} or image_id)"},
                    },
                    "additionalProperties": False,
                },
                "encoding": {"request": {"contentType": "application/json"}},
            }
        return self.route_spec(ok, *errors, body=content, ok_content=ok_content, streams=streams)

    def openapi(self) -> dict[str, Any]:
        schema = super().openapi()  # cached by FastAPI; the merge below is idempotent
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, value in self.components.items():
            if schemas.setdefault(name, value) != value:
                raise ValueError(f"FastAPI generated a different schema named {name!r}")
        return schema
