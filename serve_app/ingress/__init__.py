"""The HTTP surface of the ingress: the FastAPI app and its error handling (``http``, ``errors``), request
schemas (``schemas``, ``video_schemas``), the image cache (``image_cache``, ``cache``), readiness, the
video route's helpers and the ingress's metrics. :mod:`serve_app.app` holds the ``Ingress`` deployment
and ``build_app`` over them."""
