"""The ``Ingress`` deployment and its FastAPI app (:data:`api`): every route of the service, one router
per resource of :mod:`serve_app.ingress.routes`, included here and nowhere else.

The routes are functions of their modules; each takes the replica's
:class:`serve_app.ingress.context.IngressContext` as a FastAPI dependency (``ctx: Context``), which the
``Ingress`` replica builds from its stage handles. ``@serve.ingress(api)`` freezes the app (cloudpickle)
when this module is imported, so every router is included before the class below is decorated.
"""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.ingress.context import IngressContext
from serve_app.ingress.http import make_api
from serve_app.ingress.routes import examples, health, labelstudio, masks, predict, segment, video, video_sessions

#: The HTTP app: ``/ui``, then these routers' routes, in this order.
api = make_api(
    [
        health.router,
        segment.router,
        video.router,
        predict.router,
        examples.router,
        masks.router,
        video_sessions.router,
        labelstudio.router,
    ]
)


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.2}, max_ongoing_requests=64)
@serve.ingress(api)
class Ingress:
    """HTTP front: validation, and the calls into the stages. Each route parses its body, asks the stages
    (about an image: its owner, :class:`serve_app.ingress.image_cache.ImageOwners`), and assembles the
    answer; the replica keeps no per-image state, so it scales out.

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
        #: What the routes work with (:func:`serve_app.ingress.context.ingress_context`).
        self.context = IngressContext(encoders, decoders, fader, embedder, retriever, args, video, require_keys)
