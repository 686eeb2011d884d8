"""``/openapi.json`` with the real request and response bodies.

The POST routes read their bodies themselves (:func:`serve_app.ingress.http.parse_body`: JSON, or
multipart with a file part and an optional ``request`` JSON part), so FastAPI sees no body parameter and
would describe none. Each route declares its bodies instead with :meth:`Described.body_spec` (POST) or
:meth:`Described.route_spec` (the others), built from the same pydantic models that validate the
requests, so the field limits (``maxLength``, ``maxItems``, ``minimum``/``maximum``, ``pattern``) in the schema are the
ones enforced. Every error status carries the shared ``Error`` component,
``{"error": {"code", "message", "field", "request_id"}}``.

The models referred to are kept on the router that declares the route and on the app that includes it
(``components``, so that they travel with the app when Serve pickles the ingress) and added to FastAPI's
generated document as ``components.schemas``; a model's nested models become components too.

The 200 model of a route is also its ``response_model``: FastAPI validates the handler's answer into it
and sends the model's serialisation (the fields the handler set, ``exclude_unset``), so an answer that
drifts from its documented model (an unknown key: the models forbid extras, a wrong type) is a 500
``internal`` with the validation error in the log, never a body the document does not describe.

Adding a route (in a module of :mod:`serve_app.ingress.routes`, whose ``router`` the app includes)::

    router = DescribedRouter()

    @router.post("/v1/things", **router.body_spec(ThingRequest, ok=ThingAdded, errors=(400, 404, 413, 415, 422, 503)))
    @stage_errors
    async def add_thing(request: Request, ctx: Context) -> dict:
        req, upload = await parse_body(request, ThingRequest, ctx.args.limits.max_body_bytes)

    @router.get("/v1/things", **router.route_spec(ThingList, 404, 422, 503))

``file_part`` must match ``parse_body``'s; a route that takes no file gives ``file_part=None`` (JSON only).
Give every ``Query``/``Path`` parameter ``openapi_examples``: without them a replica's document gets
``"example": {}`` for it (FastAPI's "unset" sentinel does not survive Serve pickling the app).
``tests/integration/test_openapi_fuzz.py`` checks that the served document is the one built here.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

REF = "#/components/schemas/{model}"

#: What each error status means, for every route that can answer it. The body is always ``Error``.
ERROR_DESCRIPTIONS = {
    400: "unreadable body or image: invalid_json, invalid_multipart, invalid_base64, invalid_image, empty_image",
    401: "API keys are set and the request has none, or a wrong one (unauthorized)",
    404: "image_not_cached, unknown_collection, unknown_example, or not_found",
    409: "dimension_mismatch or embedder_mismatch: the collection holds vectors of another dimension or embedder",
    413: "body_too_large, image_too_large, or a clip over the frame limits",
    415: "unsupported_media_type: send application/json or multipart/form-data",
    422: "invalid_request (a schema rule; `field` names the field), out_of_image, out_of_clip, empty_mask",
    429: "rate_limited, with Retry-After",
    503: "overloaded, unavailable or deadline: a stage cannot take the request now, or cannot answer it before "
    "its deadline (X-Request-Timeout, or the service's limit); with Retry-After",
}
#: Answered by every ``/v1`` route when API keys or a rate limit are configured.
ACCESS_ERRORS = (401, 429)
#: The error statuses of a route that reads a body (``parse_body``) and calls the stages.
BODY_ERRORS = (400, 404, 413, 415, 422, 503)


class Described:
    """The route declarations of :class:`DescribedAPI` and :class:`DescribedRouter`: each keeps the JSON
    schemas of the models its routes refer to in :attr:`components`."""

    components: dict[str, dict]

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

    def responses_spec(
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
            schema = self.component(model, mode="serialization")
            out[status] = {"description": description, "content": {"application/json": {"schema": schema}}}
        return out

    def route_spec(
        self,
        ok: type[BaseModel] | None,
        *errors: int,
        body: dict[str, Any] | None = None,
        streams: bool = False,
        **kwargs,
    ) -> dict:
        """Keyword arguments of ``@router.get(...)`` and the like: ``responses`` (:meth:`responses_spec`, which
        takes ``kwargs``), and ``response_model=ok`` with ``response_model_exclude_unset``: the handler's
        answer (a dict) is validated into ``ok`` and sent as its serialisation, the keys the handler set
        and no others (``ok`` None: no model, and none from the return annotation either). A handler that
        returns a ``Response`` (a stream, a status of its own) bypasses the model.

        Args:
            body: the ``content`` of a request body the route reads itself in a form ``parse_body`` does
                not (e.g. ``{"application/x-ndjson": {"schema": {"type": "string"}}}``); for
                ``parse_body``'s JSON and multipart use :meth:`body_spec`.
            streams: the route answers a ``StreamingResponse`` only (its media types in ``ok_content``),
                so FastAPI adds no ``application/json`` 200 of its own.
        """
        spec = {
            "responses": self.responses_spec(ok, *errors, **kwargs),
            "response_model": ok,
            "response_model_exclude_unset": True,
        }
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
        deadline: bool = False,
    ) -> dict:
        """Keyword arguments of ``@router.post(...)`` for a route that reads its body with ``parse_body``.

        Args:
            model: the body's pydantic model (``parse_body``'s ``model``).
            file_part: the multipart file part's name (``parse_body``'s ``file_part``); None: JSON only.
            ok: the 200 body's model.
            errors: the error statuses the route answers (always with the ``Error`` body); 401 and 429
                are added.
            examples: named JSON bodies, ``{"name": {"summary": ..., "value": {...}}}``, each one a
                request the route accepts.
            ok_content: more 200 media types (see :meth:`responses_spec`).
            streams: see :meth:`route_spec`.
            deadline: the route takes the ``X-Request-Timeout`` header
                (:data:`serve_app.ingress.deadlines.TIMEOUT_PARAMETER`).

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
                        "request": {
                            **ref,
                            "description": f"the JSON body's other fields (not {file_part} or image_id)",
                        },
                    },
                    "additionalProperties": False,
                },
                "encoding": {"request": {"contentType": "application/json"}},
            }
        spec = self.route_spec(ok, *errors, body=content, ok_content=ok_content, streams=streams)
        if deadline:
            from serve_app.ingress.deadlines import TIMEOUT_PARAMETER

            spec["openapi_extra"]["parameters"] = [TIMEOUT_PARAMETER]
        return spec



class DescribedRouter(Described, APIRouter):
    """An ``APIRouter`` whose routes declare their bodies (:meth:`body_spec`, :meth:`route_spec`); a
    :class:`DescribedAPI` that includes it takes its :attr:`components`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        #: JSON schemas of the models the routes refer to, by component name (:meth:`component`).
        self.components = {}


class DescribedAPI(Described, FastAPI):
    """FastAPI whose OpenAPI document also holds the models the routes refer to (:attr:`components`), its
    own routes' and those of every :class:`DescribedRouter` it includes."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        #: JSON schemas of the models the routes refer to, by component name (:meth:`component`).
        self.components = {}

    def include_router(self, router: APIRouter, **kwargs) -> None:
        """``FastAPI.include_router``, taking a :class:`DescribedRouter`'s components too.

        Raises:
            ValueError: the router holds another, different schema under a name already registered.
        """
        for key, value in getattr(router, "components", {}).items():
            if self.components.setdefault(key, value) != value:
                raise ValueError(f"two different schemas are named {key!r} in the OpenAPI components")
        super().include_router(router, **kwargs)

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document with :attr:`components` as ``components.schemas``.

        FastAPI also describes the routes' ``response_model``s (the same models, registered here by
        :meth:`route_spec`); where it names one of ours, ours is kept: pydantic's serialisation schema
        as it is (FastAPI's rendering drops ``"default": null`` and writes integer bounds as floats).
        """
        schema = super().openapi()  # cached by FastAPI; the merge below is idempotent
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(self.components)
        return schema
