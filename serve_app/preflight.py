"""One pre-flight for ``samgraph serve``, ``samgraph batch`` and :func:`serve_app.app.build_app`: resolve
the weights and the store from the settings and the environment, and fail fast, before any replica
starts, when they cannot be had."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deployments.runtime.clip_weights import ClipWeightsSource, preflight_embedder
from deployments.runtime.exports import verify_export
from deployments.runtime.model_weights import preflight as preflight_model
from deployments.runtime.store_checks import preflight_store
from deployments.runtime.weights import WeightsSource
from models.registry import get_model_spec
from serve_app.ingress.access import load_keys


@dataclass(frozen=True)
class Prepared:
    """What every replica of every stage loads, resolved once.

    Attributes:
        models: each served model's weights, by ``model_id``, the default first (image and video stages).
        clip: the CLIP weights.
        store: keyword arguments of the Retriever (``{"path"}`` or ``{"url", "api_key"}``); empty when the
            store was not asked for.
        api_keys: how many API keys ``args.auth`` names here (keys file and env var); 0 without ``auth``.
    """

    models: dict[str, WeightsSource]
    clip: ClipWeightsSource
    store: dict
    api_keys: int = 0

    @property
    def model(self) -> WeightsSource:
        """The default (first) model's weights."""
        return next(iter(self.models.values()))


def preflight(args: Any, *, clip: bool = True, store: bool = True) -> Prepared:
    """Resolve and check the weights (and the store) named by ``args``.

    Args:
        args: :class:`serve_app.config.AppArgs` (every model of ``served_models()``) or the offline
            ``BatchArgs``: ``model_id``, ``weights``, ``checkpoint``, ``seed``, ``clip`` (``model_name``,
            ``pretrained``, ``weights``, ``checkpoint``) and ``retriever`` (``path``, ``url``, ``api_key``).
        clip: check the CLIP weights too (downloading them if they are to be downloaded).
        store: check the store's data dir too.

    Raises:
        ValueError: an unknown model id or weights kind.
        WeightsError, ChecksumMismatch: weights that cannot be had; the message names the alternatives.
        StoreError: a data dir that cannot be written.
        ExportError: a model's ``export_dir`` lacks a file, or a file differs from its manifest.
        ValueError: ``auth.keys_file`` missing, unreadable or empty, or a malformed key entry.
    """
    auth = getattr(args, "auth", None)
    api_keys = len(load_keys(auth.keys_file, auth.keys_env)) if auth is not None else 0  # fails fast on a bad file
    served = args.served_models() if hasattr(args, "served_models") else [args]
    models = {}
    for m in served:
        sam2 = get_model_spec(m.model_id).family == "sam2"  # SAMGRAPH_SAM2_CHECKPOINT names a SAM 2 file
        models[m.model_id] = WeightsSource.resolve(m.weights, m.checkpoint, m.seed, checkpoint_from_env=sam2)
        preflight_model(m.model_id, models[m.model_id])
        if getattr(m, "export_dir", None):  # a user's export: refused now when a file is missing or altered
            verify_export(m.export_dir, require_manifest=False, model_id=m.model_id)
    clip_source = ClipWeightsSource.resolve(args.clip.weights, args.clip.checkpoint, args.seed)
    if clip:
        c = args.clip
        preflight_embedder(getattr(c, "family", "open_clip"), c.model_name, c.pretrained, clip_source)
    r = args.retriever
    return Prepared(models, clip_source, preflight_store(r.path, r.url, r.api_key) if store else {}, api_keys)
