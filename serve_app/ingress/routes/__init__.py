"""The HTTP routes, one module per resource, each with a ``router``
(:class:`serve_app.ingress.openapi.DescribedRouter`) that :mod:`serve_app.ingress.deployment` includes
into the ingress's app:

============================  ==========================================================================
``health``                    ``/healthz``, ``/readyz``, ``/v1/stats``, ``/metrics``
``segment``                   ``POST /v1/segment``
``predict``                   ``POST /v1/predict``
``examples``                  ``/v1/examples`` (add, list, delete), ``/v1/examples/export``, ``/import``
``masks``                     ``POST /v1/masks/polygons``
``video``                     ``POST /v1/segment/video``
``video_sessions``            ``/v1/video/sessions/...``
``labelstudio``               ``/integrations/label-studio/...``: the Label Studio ML backend
============================  ==========================================================================

A route is a function of its module: it takes what it needs from the replica's
:class:`serve_app.ingress.context.IngressContext` (a parameter ``ctx: Context``) and declares its bodies
with ``router.body_spec`` / ``router.route_spec`` (:mod:`serve_app.ingress.openapi`), whose 200 model is
also the model its answer is validated into.
"""
