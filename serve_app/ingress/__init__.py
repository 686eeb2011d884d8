"""The HTTP surface of the ingress: the ``Ingress`` deployment and its FastAPI app (``deployment``), the
routes, one module per resource (``routes``), what they work with (``context``), the app's error handling
and body parsing (``http``, ``errors``), request schemas (``schemas``, ``video_schemas``, ``params``), the
answers' models (``responses``) and the OpenAPI declarations (``openapi``), the image cache
(``image_cache``), readiness, the video routes' helpers and the ingress's metrics. :mod:`serve_app.app`
holds ``build_app``, which binds the stages and the ``Ingress``."""
