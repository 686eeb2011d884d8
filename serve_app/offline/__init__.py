"""Offline jobs on Ray Data, no service needed: ``samgraph batch`` and ``samgraph eval``.

* :mod:`.inputs`: the input images (a folder or a COCO file), the checked flags, prompt validation;
* :mod:`.pipeline`: the run's settings and the Ray Data pipeline over the stages of
  :mod:`deployments.offline_stages` and :mod:`deployments.offline_label_stages`;
* :mod:`.writer`: ``results.json``, ``instances.parquet`` and ``summary.json``, written atomically;
* :mod:`.evaluate`: mask quality against COCO ground truth;
* :mod:`.cli`: the two sub-commands of ``samgraph``.

Nothing is imported here: ``import serve_app.offline`` stays light.
"""
