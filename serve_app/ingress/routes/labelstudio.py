"""samgraph as a Label Studio ML backend, under ``/integrations/label-studio``: the URL a Label Studio user
pastes into *Settings -> Model*.

The four routes answer as Label Studio's own SDK (``label-studio-ml-backend``'s ``api.py``) does:

- ``GET /health``: ``{"status": "UP", "model_class": "samgraph"}``.
- ``POST /setup`` (``{"project", "schema", "hostname", "access_token", "extra_params"}``): the label config
  is checked (:func:`serve_app.labelstudio.parse_label_config`; a config samgraph cannot answer is a 422
  with the reason) and ``{"model_version"}`` answered. ``extra_params`` (Label Studio's *Extra params* of
  the connection) may name the served ``model_id`` that answers the project and the ``collection`` its
  pre-labelling labels from (:func:`serve_app.labelstudio.parse_extra_params`); they are remembered per
  project, like the host and token.
- ``POST /predict`` (``{"tasks", "project", "label_config", "params": {"context"}}``):
  ``{"results": [one prediction per task]}``. With a ``context`` (the annotator's keypoints, rectangle or
  text: interactive pre-annotation) the first task gets the object's mask, as ``brushlabels`` or, when the
  config has ``PolygonLabels``, ``polygonlabels``, labelled with the annotator's label, by what
  ``/v1/segment`` does (:func:`serve_app.ingress.routes.segment.segment_image`). Without one (Label
  Studio's *Retrieve predictions*) every task gets every instance of the config's label names: SAM 3
  concept prompts on a model with concept prompts, else the labels of the stored few-shot examples, by
  what ``/v1/predict`` does (:func:`serve_app.ingress.routes.predict.predict_image`).
- ``POST /webhook``: accepted and answered 200 (samgraph does not train on annotations).

A task's image is fetched once per ingress replica (:class:`serve_app.task_images.TaskImages`
remembers its ``image_id``); later calls name the image by id, so its owner answers from its cache
without encoding it again. With API keys set, these routes need one: Label Studio's *basic auth* for ML
backends sends it as the password (:mod:`serve_app.ingress.access`).
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.errors import ImageNotCached
from serve_app.ingress import request_examples as ex
from serve_app.ingress.context import Context, IngressContext
from serve_app.ingress.deadlines import request_deadline
from serve_app.ingress.errors import ApiError, from_validation_error
from serve_app.ingress.http import parse_body, stage_errors
from serve_app.ingress.openapi import DescribedRouter
from serve_app.ingress.routes.predict import predict_image
from serve_app.ingress.routes.segment import segment_image
from serve_app.ingress.schemas import PredictRequest, SegmentRequest
from serve_app.labelstudio import (
    BackendOptions,
    Interaction,
    LabelConfig,
    instances_prediction,
    mask_regions,
    model_version,
    parse_context,
    parse_extra_params,
    parse_label_config,
    prediction,
)
from serve_app.task_images import LabelStudioHost

router = DescribedRouter()

#: Where the backend is mounted; Label Studio appends ``health``, ``setup``, ``predict``, ``webhook``.
PREFIX = "/integrations/label-studio"
#: What ``/health`` names as the backend's class (the SDK answers its model class's name).
MODEL_CLASS = "samgraph"
#: Tasks of one pre-labelling request in flight at once (each a fetch and a ``/v1/predict``).
PRELABEL_IN_FLIGHT = 4
#: At most this many tasks per ``/predict`` request (Label Studio sends batches of up to 100 by default).
MAX_TASKS = 1000
LS = ConfigDict(extra="allow")  # Label Studio adds fields between versions: ignore what we do not read
LS_ERRORS = (400, 404, 413, 415, 422, 503)


class LsHealth(BaseModel):
    """200 of ``GET /health``: as the SDK's."""

    status: str
    model_class: str


class LsSetup(BaseModel):
    """Body of ``POST /setup``, as Label Studio sends it."""

    model_config = LS
    project: str = Field(default="", max_length=200, description="the project uid, <id>.<created timestamp>")
    label_config: str = Field(alias="schema", max_length=1_000_000, description="the project's label config XML")
    hostname: str | None = Field(default=None, max_length=2000, description="Label Studio's base URL")
    access_token: str | None = Field(default=None, max_length=2000, description="a token to read its files with")
    extra_params: dict | str | None = None


class LsSetupAnswer(BaseModel):
    """200 of ``POST /setup``."""

    model_version: str


class LsPredict(BaseModel):
    """Body of ``POST /predict``, as Label Studio sends it."""

    model_config = LS
    tasks: list[dict] = Field(min_length=1, max_length=MAX_TASKS, description="tasks, each with id and data")
    project: str | None = Field(default=None, max_length=200)
    label_config: str = Field(max_length=1_000_000)
    params: dict | None = Field(default=None, description="context: the annotator's regions (interactive)")


class LsPredictAnswer(BaseModel):
    """200 of ``POST /predict``: one prediction per task, in order."""

    results: list[dict] = Field(description="{result: [regions], score, model_version} per task")


class LsWebhook(BaseModel):
    """Body of ``POST /webhook`` (Label Studio's event)."""

    model_config = LS
    action: str | None = None


class LsWebhookAnswer(BaseModel):
    """200 of ``POST /webhook``."""

    status: str
    action: str | None = None


def require_brush_encoder() -> None:
    """503 ``unavailable`` when ``label-studio-sdk`` (Label Studio's brush RLE) is not installed here."""
    try:
        from label_studio_sdk.converter import brush  # noqa: F401
    except ImportError:
        message = "brush masks need label-studio-sdk on the samgraph service: pip install label-studio-sdk"
        raise ApiError(503, "unavailable", message) from None


def label_config_or_422(xml: str, field: str) -> LabelConfig:
    try:
        return parse_label_config(xml)
    except ValueError as e:
        raise ApiError(422, "unsupported_label_config", str(e)[:500], field) from None


@router.get(f"{PREFIX}/health", **router.route_spec(LsHealth))
async def health() -> dict:
    """Label Studio's connection check: the backend answers."""
    return {"status": "UP", "model_class": MODEL_CLASS}


@router.post(
    f"{PREFIX}/setup",
    **router.body_spec(LsSetup, None, ok=LsSetupAnswer, errors=LS_ERRORS, examples=ex.LS_SETUP_EXAMPLES),
)
@stage_errors
async def setup(request: Request, ctx: Context) -> dict:
    """Label Studio's project set-up: the label config is one samgraph can answer (else 422 with the reason
    Label Studio shows), and the model version."""
    req, _ = await parse_body(request, LsSetup, ctx.args.limits.max_body_bytes, file_part=None)
    config = label_config_or_422(req.label_config, "schema")
    if config.mask_control.tag == "BrushLabels":
        require_brush_encoder()
    try:
        options = parse_extra_params(req.extra_params)
    except ValueError as e:
        raise ApiError(422, "invalid_request", str(e)[:300], "extra_params") from None
    model = ctx.model(options.model_id, "extra_params.model_id")
    if options.collection is not None and not model.capabilities.concept_prompts:
        ctx.require(model, "automatic_masks", "extra_params.collection")
    ctx.task_images.remember_setup(req.project, req.hostname, req.access_token, options)
    return {"model_version": model_version(model.model_id)}


@router.post(
    f"{PREFIX}/webhook",
    **router.body_spec(LsWebhook, None, ok=LsWebhookAnswer, errors=(400, 413, 415, 422), examples=ex.LS_WEBHOOK),
)
async def webhook(request: Request, ctx: Context) -> dict:
    """Label Studio's events (annotation created, training asked): accepted; samgraph does not train."""
    req, _ = await parse_body(request, LsWebhook, ctx.args.limits.max_body_bytes, file_part=None)
    return {"status": "ok", "action": req.action}


@router.post(
    f"{PREFIX}/predict",
    **router.body_spec(
        LsPredict, None, ok=LsPredictAnswer, errors=LS_ERRORS, examples=ex.LS_PREDICT_EXAMPLES, deadline=True
    ),
)
@stage_errors
async def predict(request: Request, ctx: Context) -> dict:
    """Interactive pre-annotation (a ``params.context``: the first task's object) or whole-task
    pre-labelling (none: every task, every label name of the config)."""
    deadline = request_deadline(request, ctx.args.limits.request_timeout_s)
    req, _ = await parse_body(request, LsPredict, ctx.args.limits.max_body_bytes, file_part=None)
    config = label_config_or_422(req.label_config, "label_config")
    if config.mask_control.tag == "BrushLabels":
        require_brush_encoder()
    try:
        interaction = parse_context((req.params or {}).get("context") or {})
    except (ValueError, AttributeError) as e:
        raise ApiError(422, "invalid_request", str(e)[:300], "params.context") from None
    host = ctx.task_images.host(req.project)
    options = ctx.task_images.options(req.project)
    if interaction is not None:
        return {"results": [await interactive(ctx, req.tasks[0], config, interaction, host, options, deadline)]}
    gate = asyncio.Semaphore(PRELABEL_IN_FLIGHT)

    async def one(task: dict) -> dict:
        async with gate:
            return await prelabel(ctx, task, config, host, options, deadline)

    # Tasks showing the same image URL share one prediction (a prediction depends only on the image and the
    # config): a batch that repeats an image costs one /v1/predict, not one per task.
    by_url: dict[str, asyncio.Future] = {}
    answers = []
    for task in req.tasks:
        data = task.get("data") if isinstance(task, dict) else None
        url = data.get(config.image_key) if isinstance(data, dict) else None
        if isinstance(url, str) and url:
            if url not in by_url:
                by_url[url] = asyncio.ensure_future(one(task))
            answers.append(by_url[url])
        else:
            answers.append(asyncio.ensure_future(one(task)))
    return {"results": list(await asyncio.gather(*answers))}


async def on_task_image(ctx: IngressContext, task: dict, config: LabelConfig, host: LabelStudioHost | None, call):
    """``await call(image_id, data)`` about a task's image: by the ``image_id`` its URL already has (no
    fetch; the owner answers from its cache), else, or when the owner no longer holds it, with the bytes
    fetched from the URL, whose ``image_id`` is then remembered.

    Args:
        call: ``(image_id or None, bytes or None) -> answer``: ``segment_image`` / ``predict_image`` with a
            request naming the image that way; the answer's ``image_id`` is remembered.

    Raises:
        ApiError: 422 ``image_unavailable`` for a task without an image URL under the config's key, or an
            image that cannot be fetched.
    """
    data = task.get("data") if isinstance(task, dict) else None
    url = data.get(config.image_key) if isinstance(data, dict) else None
    if not isinstance(url, str) or not url:
        tid = task.get("id") if isinstance(task, dict) else None
        message = f"task {tid}: its data has no image URL under {config.image_key!r} (the <Image> tag's value)"
        raise ApiError(422, "image_unavailable", message, "tasks")
    key, _ = ctx.task_images.resolve(url, host)
    inline = key.startswith("data:")  # its bytes are at hand: not remembered (the owner's cache still hits)
    image_id = None if inline else ctx.task_images.ids.get(key)
    if image_id is not None:
        try:
            return await call(image_id, None)
        except ImageNotCached:  # evicted, or its owner restarted: fetch it again
            pass
    answer = await call(None, await ctx.task_images.fetch(url, host))
    if not inline:
        ctx.task_images.ids.put(key, answer["image_id"])
    return answer


def _validated(model: type[BaseModel], body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise from_validation_error(e) from None


async def interactive(
    ctx: IngressContext,
    task: dict,
    config: LabelConfig,
    click: Interaction,
    host: LabelStudioHost | None,
    options: BackendOptions = BackendOptions(),
    deadline: float | None = None,
) -> dict:
    """The prediction of one interactive request: the mask of the annotator's keypoints and/or rectangle
    (the best of ``/v1/segment``'s), and every instance of a typed text on a model with concept prompts
    (the project's model: ``options.model_id``, else the default). ``deadline``: the request's, absolute
    ``time.time()`` seconds (None: none), as ``/v1/segment``'s."""
    model = ctx.model(options.model_id, "extra_params.model_id")
    control = config.mask_control
    label = click.label if click.label in control.labels else control.labels[0]
    prompts = []
    if click.points or click.box_xyxy is not None:
        geometry = {"points": [list(p) for p in click.points] or None, "box_xyxy": list(click.box_xyxy or []) or None}
        prompts.append({k: v for k, v in geometry.items() if v is not None})
    if click.texts:
        ctx.require(model, "concept_prompts", "params.context")
        prompts += [{"text": t} for t in click.texts]
    polygons = control.tag == "PolygonLabels"
    body = {"model_id": model.model_id, "prompts": prompts, "max_masks": 1}
    body["mask_format"] = "polygon" if polygons else "rle"

    async def call(image_id, data):
        req = _validated(SegmentRequest, {**body, "image_id": image_id})
        return await segment_image(ctx, req, data, endpoint=f"{PREFIX}/predict", deadline=deadline)

    answer = await on_task_image(ctx, task, config, host, call)
    results = []
    for prompt, result in zip(prompts, answer["results"]):
        found = result.get("masks") or result.get("instances") or []
        named = prompt.get("text") if prompt.get("text") in control.labels else label
        for m in found[:1] if "masks" in result else found:
            score = min(1.0, max(0.0, float(m.get("predicted_iou", m.get("score", 0.0)))))
            results += mask_regions(m, control, named, answer["width"], answer["height"], score)
    return prediction(results, model_version(answer["model_id"]))


async def prelabel(
    ctx: IngressContext,
    task: dict,
    config: LabelConfig,
    host: LabelStudioHost | None,
    options: BackendOptions = BackendOptions(),
    deadline: float | None = None,
) -> dict:
    """A task's prediction without a click: every instance of the config's label names, by SAM 3 concept
    prompts on a model with concept prompts, else the instances whose few-shot label (from
    ``options.collection``, else ``default``) is one of them (:func:`serve_app.labelstudio.instances_prediction`).
    ``deadline``: the request's, absolute ``time.time()`` seconds (None: none), as ``/v1/predict``'s."""
    model = ctx.model(options.model_id, "extra_params.model_id")
    control = config.mask_control
    body = {"model_id": model.model_id, "mask_format": "polygon" if control.tag == "PolygonLabels" else "rle"}
    if model.capabilities.concept_prompts:
        body["classes"] = list(config.label_names)
    if options.collection is not None:
        body["collection"] = options.collection

    async def call(image_id, data):
        req = _validated(PredictRequest, {**body, "image_id": image_id})
        return await predict_image(ctx, req, data, endpoint=f"{PREFIX}/predict", deadline=deadline)

    answer = await on_task_image(ctx, task, config, host, call)
    return instances_prediction(answer["instances"], config, answer["width"], answer["height"], answer["model_id"])
