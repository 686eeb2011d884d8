"""What the routes of one ingress replica work with: the stage handles, the app's arguments, the image
owners, the video sessions and the ingress metrics, as :class:`IngressContext`.

A route takes it as a parameter annotated :data:`Context` (FastAPI's ``Depends``)::

    @router.get("/v1/things", **router.route_spec(ThingList, 503))
    async def list_things(ctx: Context) -> dict:
        return await ctx.retriever.things.remote()

The ``Ingress`` deployment (:mod:`serve_app.ingress.deployment`) builds one per replica; the dependency
finds it through Serve's replica context, so the routes are plain functions of their modules, pickled
by reference with the app. A test without Ray gives the routes another one with
``api.dependency_overrides[ingress_context]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from ray.serve.handle import DeploymentHandle

from deployments.errors import UnsupportedByModel
from models.amg import AmgSettings
from models.registry import family_of
from models.segmenter import Capabilities
from serve_app.config import AppArgs
from serve_app.ingress.access import AccessPolicy, install_access
from serve_app.ingress.errors import ApiError
from serve_app.ingress.http import log
from serve_app.ingress.image_cache import ImageOwners
from serve_app.ingress.metrics import IngressMetrics
from serve_app.ingress.schemas import FadeIn
from serve_app.ingress.video_sessions import VideoSessions
from serve_app.settings import amg_settings, fade_settings
from serve_app.task_images import TaskImages


@dataclass(frozen=True)
class ServedModel:
    """A model the service serves, as a route needs it.

    Attributes:
        model_id: its registry name.
        capabilities: what its family can be asked (:class:`models.segmenter.Capabilities`).
    """

    model_id: str
    capabilities: Capabilities


class IngressContext:
    """The stages and settings behind the routes of one ingress replica. It keeps no per-image state
    (every call about an image goes to the ``MaskDecoder`` replica that owns it), so replicas scale out.

    Args:
        encoders, decoders: each served model's ``ImageEncoder`` and ``MaskDecoder`` handles, by
            ``model_id``, the default model first.
        fader, embedder, retriever: handles to the stage deployments.
        args: :class:`serve_app.config.AppArgs` as a dict.
        video: handle to the ``VideoSegmenter`` (None: the video routes answer 404).
        require_keys: the app was built with API keys: a replica that finds none fails to start
            (:meth:`serve_app.ingress.access.AccessPolicy.from_args`).
    """

    def __init__(
        self,
        encoders: dict[str, DeploymentHandle],
        decoders: dict[str, DeploymentHandle],
        fader: DeploymentHandle,
        embedder: DeploymentHandle,
        retriever: DeploymentHandle,
        args: dict,
        video: DeploymentHandle | None = None,
        require_keys: bool = False,
    ) -> None:
        self.args = AppArgs.model_validate(args)
        if list(encoders) != list(decoders) or not decoders:
            raise ValueError("encoders and decoders must name the same models, in the same order")
        self.encoders, self.decoders, self.fader = dict(encoders), dict(decoders), fader
        self.embedder, self.retriever, self.video = embedder, retriever, video
        self.default_model = next(iter(decoders))
        self.metrics = IngressMetrics.install()
        log.info(install_access(AccessPolicy.from_args(self.args.auth, require_keys=require_keys)).describe())
        self.images = ImageOwners(self.decoders, self.args.limits.max_image_pixels)
        self.task_images = TaskImages(self.args.limits.max_body_bytes)
        v = self.args.video
        self.sessions = (
            None
            if video is None
            else VideoSessions(video, v.max_frames, v.max_frame_pixels, self.args.limits.max_body_bytes)
        )

    @property
    def encoder(self) -> DeploymentHandle:
        """The default model's ``ImageEncoder``."""
        return self.encoders[self.default_model]

    @property
    def decoder(self) -> DeploymentHandle:
        """The default model's ``MaskDecoder``."""
        return self.decoders[self.default_model]

    def model(self, model_id: str | None, field: str = "model_id") -> ServedModel:
        """The served model a request names (None: the default, the first served).

        Raises:
            ApiError: 422 naming ``field`` when the service does not serve ``model_id``; the message lists
                the served ones.
        """
        model_id = model_id or self.default_model
        if model_id not in self.decoders:
            served = ", ".join(self.decoders)
            raise ApiError(422, "invalid_request", f"{field}: {model_id!r} is not served here; served: {served}", field)
        return ServedModel(model_id, family_of(model_id).capabilities)

    def require(self, model: ServedModel, capability: str, field: str) -> None:
        """422 ``unsupported_by_model`` naming ``field`` and the model when it lacks ``capability``."""
        if not getattr(model.capabilities, capability):
            raise UnsupportedByModel.lacking(model.model_id, capability, field)

    def stages(self) -> dict[str, DeploymentHandle]:
        """The stage handles by name, in :data:`serve_app.ingress.readiness.READINESS_STAGES` order (the
        default model's encoder and decoder; the others are :meth:`model_stages`)."""
        stages = {
            "encoder": self.encoder,
            "decoder": self.decoder,
            "embedder": self.embedder,
            "retriever": self.retriever,
            "fader": self.fader,
        }
        return {**stages, "video": self.video} if self.video is not None else stages

    def model_stages(self) -> dict[str, dict[str, DeploymentHandle]]:
        """``{model_id: {"encoder", "decoder"}}`` of every served model, the default first."""
        return {m: {"encoder": self.encoders[m], "decoder": self.decoders[m]} for m in self.decoders}

    def video_sessions(self) -> VideoSessions:
        """The session routes' logic; 404 ``not_found`` when the app has no video segmenter."""
        if self.sessions is None:
            raise ApiError(404, "not_found", "this app has no video segmenter")
        return self.sessions

    def fade_spec(self, fade: FadeIn | None) -> dict:
        """Request fade settings over the app's defaults (:func:`serve_app.settings.fade_settings`),
        ``{"strategy", "params"}``, validated now (422 naming the parameter)."""
        from models.fade_strategies import make_fade_strategy

        base = self.args.fader
        asked = (None, None) if fade is None else (fade.strategy, fade.params())
        spec = fade_settings(base.strategy, base.params, *asked)
        try:
            make_fade_strategy(spec["strategy"], **spec["params"])
        except ValueError as e:
            field = next((f"fade.{n}" for n in spec["params"] if n in str(e)), "fade.strategy")
            raise ApiError(422, "invalid_request", f"{field}: {e}", field) from None
        return spec

    def amg(self, overrides) -> AmgSettings:
        """The request's ``amg`` overrides (an ``AmgIn`` or None) over the app's; 422 ``amg`` when invalid."""
        try:
            return amg_settings(self.args.amg.model_dump(), overrides.model_dump() if overrides is not None else None)
        except ValueError as e:
            raise ApiError(422, "invalid_request", f"amg: {e}", "amg") from None

    async def collection(self, name: str) -> dict:
        """``{"dim", "count"}`` of an existing collection; 404 ``unknown_collection`` otherwise."""
        info = await self.retriever.collection_or_none.remote(name)
        if info is None:
            raise ApiError(
                404, "unknown_collection", f"collection {name!r} does not exist; add examples first", "collection"
            )
        return info



async def ingress_context() -> IngressContext:
    """The :class:`IngressContext` of the ``Ingress`` replica serving the request (a FastAPI dependency)."""
    from ray import serve

    return serve.get_replica_context().servable_object.context


#: A route's parameter ``ctx: Context``: this replica's :class:`IngressContext`.
Context = Annotated[IngressContext, Depends(ingress_context)]
