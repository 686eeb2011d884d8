"""In-process API without Ray, for notebooks and scripts: the same ``models/`` code as the deployments.

    from models.prompts import Prompt
    from serve_app.local import LocalPipeline
    pipe = LocalPipeline.load(weights="random")              # or a checkpoint / the registry download
    masks = pipe.segment(image, [Prompt(box_xyxy=[75, 275, 1725, 850])])   # or {"box_xyxy": [...]}
    pipe.add_example(image, "truck", box_xyxy=[75, 275, 1725, 850])
    found = pipe.predict(other_image)                        # instances with labels from the examples

Every part is injectable: pass your own encoder/decoder, fade strategy, embedder or vector store.
Images are (H, W, 3) uint8 RGB arrays; coordinates are pixels, boxes XYXY. Prompts are the vocabulary
below HTTP (:class:`models.prompts.Prompt`, or its JSON form as ``/v1/segment`` takes it): this module
imports nothing of the HTTP layer (``serve_app/ingress``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from deployments.contracts import check_in_image
from models.amg import AmgSettings, AutoMask, generate_masks
from models.fade_strategies import FadeStrategy, GaussianFade
from models.fader import CropSettings, fade_and_crop_batch
from models.masks import decode_rle, encode_rle, rle_area, rle_bbox_xyxy
from models.prompts import Prompt, decoder_prompts
from models.segmenter import ConceptPrediction, ConceptPrompt, ConceptRequest, DecodeRequest, MaskPrediction
from serve_app.assemble import instances, rank_by_text


class LocalPipeline:
    """Segment, label and search in one process.

    Args:
        encoder, decoder: a model family's encoder and decoder over one model
            (:meth:`models.segmenter.SegmenterFamily.encoder`, ``.decoder``).
        embedder: a :class:`models.embedders.TextImageEmbedder` (e.g. :class:`models.embedder.ClipEmbedder`),
            or None (segmentation only).
        store: a :class:`deployments.runtime.vectorstore.ExampleStore`, or None (no examples).
        embedder_id: the embedder's identity (:func:`models.embedders.embedder_identity`; :meth:`load` sets
            it): collections record it and refuse another's vectors (``EmbedderMismatch``). None: not
            recorded or checked.
        fade: the fade strategy for crops (default ``GaussianFade()``).
        crop: crop geometry (default ``CropSettings()``).
        amg: automatic-mask settings (default ``AmgSettings()``).
    """

    def __init__(
        self,
        encoder,
        decoder,
        embedder=None,
        store=None,
        fade: FadeStrategy | None = None,
        crop: CropSettings | None = None,
        amg: AmgSettings | None = None,
        embedder_id: str | None = None,
    ) -> None:
        self.encoder, self.decoder, self.embedder, self.store = encoder, decoder, embedder, store
        self.embedder_id = embedder_id
        self.fade = fade or GaussianFade()
        self.crop = crop or CropSettings()
        self.amg = amg or AmgSettings()
        #: Per stage, the runtime and precision asked for and in force (:meth:`load` fills it; ``/readyz``'s
        #: ``runtime``); empty for stages passed in.
        self.runtimes: dict[str, dict] = {}

    @classmethod
    def load(
        cls,
        model_id: str = "sam2.1_hiera_tiny",
        weights: str | None = None,
        checkpoint: str | None = None,
        clip_model: str = "ViT-B-32",
        clip_pretrained: str = "laion2b_s34b_b79k",
        clip_checkpoint: str | None = None,
        store=None,
        embedder_family: str = "open_clip",
        encoder_stage: Mapping | None = None,
        decoder_stage: Mapping | None = None,
        export_dir: str | None = None,
        **kwargs,
    ) -> LocalPipeline:
        """Build every stage from the same weight sources as the service (environment fills unset ones), for
        any model of :mod:`models.registry` (``model_id``: ``sam2.1_hiera_tiny``, ``mobile_sam``, ``sam3``...).

        ``store`` defaults to an in-memory store; pass ``ExampleStore.from_env()`` to use the service's.
        ``embedder_family`` names the embedder's family in :data:`models.embedders.EMBEDDERS`.
        ``encoder_stage`` / ``decoder_stage``: the runtime, precision and torch speed-ups of each stage, as a
        model's ``encoder`` / ``decoder`` in the app config (:class:`serve_app.config.RuntimeArgs`, e.g.
        ``{"runtime": "onnxruntime"}``; device and threads are the process's); unset: torch fp32, as before.
        ``export_dir``: the model's own ONNX export (else samgraph's in the cache dir, written on first use).
        What runs is :attr:`runtimes` (fallbacks are logged, as in the service).

        Raises:
            pydantic.ValidationError: a bad stage setting (it names the field).
        """
        from deployments.runtime.clip_weights import ClipWeightsSource, load_embedder
        from deployments.runtime.model_weights import load_model
        from deployments.runtime.replica import fallback_logger
        from deployments.runtime.stage_runtime import build_stage
        from deployments.runtime.vectorstore import ExampleStore
        from deployments.runtime.weights import WeightsSource
        from models.registry import get_model_spec
        from serve_app.config import RuntimeArgs

        stages = {"encoder": RuntimeArgs.model_validate(encoder_stage or {})}
        stages["decoder"] = RuntimeArgs.model_validate(decoder_stage or {})
        sam2 = get_model_spec(model_id).family == "sam2"
        source = WeightsSource.resolve(weights, checkpoint, checkpoint_from_env=sam2)
        loaded = load_model(model_id, source)
        built, runtimes = {}, {}
        for name, args in stages.items():
            built[name], chosen, _ = build_stage(
                name,
                loaded,
                "cpu",
                None,
                args.accel(),
                args.runtime_settings(export_dir),
                {"kind": source.kind, "seed": source.seed},
                fallback_logger(name),
                free_unused=False,  # one model serves both stages here
            )
            runtimes[name] = chosen.state()
        clip_weights = "random" if weights == "random" else None
        clip = load_embedder(
            embedder_family, clip_model, clip_pretrained, ClipWeightsSource.resolve(clip_weights, clip_checkpoint)
        )
        pipe = cls(
            built["encoder"],
            built["decoder"],
            clip.embedder,
            store if store is not None else ExampleStore(in_memory=True),
            embedder_id=clip.identity,
            **kwargs,
        )
        pipe.runtimes = runtimes
        return pipe

    def segment(
        self, image: np.ndarray, prompts: Sequence[Prompt | Mapping], multimask_output: bool | None = None
    ) -> list[MaskPrediction]:
        """Masks for box/point/mask prompts (text prompts: :meth:`find_by_text`); no prompts -> centre click.

        Args:
            image: (H, W, 3) uint8 RGB.
            prompts: :class:`models.prompts.Prompt` per object, or its dict form
                (:meth:`models.prompts.Prompt.from_dict`: ``box_xyxy``, ``points`` [[x, y, label], ...]...);
                coordinates are pixels of ``image``.
            multimask_output: for every prompt; None: each prompt's own choice, else SAM's advice.

        Returns:
            One :class:`models.segmenter.MaskPrediction` per prompt, in order.

        Raises:
            models.prompts.PromptError: a prompt that breaks a rule, naming ``prompts[i].<field>``.
            deployments.errors.OutOfImage: a box or point outside the image, naming it.
            ValueError: a text prompt.
        """
        h, w = image.shape[:2]
        parsed = [p if isinstance(p, Prompt) else Prompt.from_dict(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        check_in_image([(p.box_xyxy, () if p.point_coords is None else p.point_coords) for p in parsed], w, h)
        specs, defaults = decoder_prompts(parsed, w, h)
        flags = defaults if multimask_output is None else [multimask_output] * len(specs)
        features = self.encoder.encode(image)
        return self.decoder.predict_batch([DecodeRequest(features, specs, flags)])[0]

    def find_concepts(
        self,
        image: np.ndarray,
        concepts: Sequence[ConceptPrompt | str],
    ) -> list[ConceptPrediction]:
        """Every instance of each concept (a text, or a :class:`models.segmenter.ConceptPrompt` with example
        boxes, ``score_thresh``, ``max_instances``), on a model with concept prompts (SAM 3), one encode.

        Raises:
            ValueError: the model's decoder takes no concept prompts; a bad concept.
        """
        if not hasattr(self.decoder, "segment_concepts"):
            raise ValueError("this model takes no concept prompts (use find_by_text for CLIP ranking)")
        prompts = [ConceptPrompt(text=c) if isinstance(c, str) else c for c in concepts]
        h, w = image.shape[:2]
        for i, p in enumerate(prompts):
            check_in_image([(b, ()) for b in ([] if p.boxes_xyxy is None else p.boxes_xyxy)], w, h, f"concepts[{i}]")
        return self.decoder.segment_concepts([ConceptRequest(self.encoder.encode(image), prompts)])[0]

    def auto_masks(self, image: np.ndarray, settings: AmgSettings | None = None) -> list[AutoMask]:
        """Every object in the image (sam2's automatic mask generation over the split stages)."""
        return generate_masks(self.decoder, self.encoder.encode(image), settings or self.amg)

    def crops(self, image: np.ndarray, masks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Faded, cropped, resized views of the image around each (H, W) bool mask."""
        return fade_and_crop_batch([image] * len(masks), list(masks), self.fade, self.crop)

    def add_example(
        self,
        image: np.ndarray,
        label: str,
        box_xyxy: Sequence[float] | None = None,
        points: Sequence[Sequence] | None = None,
        mask: np.ndarray | None = None,
        collection: str = "default",
    ) -> list[str]:
        """Store one labelled object given by a prompt (its best mask) or an (H, W) bool mask."""
        self._need_retrieval()
        if mask is None:
            prompt = {k: v for k, v in (("box_xyxy", box_xyxy), ("points", points)) if v is not None}
            pred = self.segment(image, [Prompt.from_dict(prompt)], multimask_output=None)[0]
            mask = pred.masks[int(np.argmax(pred.predicted_iou))]
        if not mask.any():
            raise ValueError("the object's mask is empty; nothing to embed")
        vec = self.embedder.embed_images(self.crops(image, [mask]))
        rle = encode_rle(mask)
        payload = {"bbox_xyxy": rle_bbox_xyxy(rle), "area_px": rle_area(rle)}
        return self.store.add(collection, vec, [label], [payload], embedder=self.embedder_id)

    def predict(
        self,
        image: np.ndarray,
        collection: str = "default",
        top_k: int = 5,
        min_score: float = 0.0,
        max_instances: int = 20,
        mask_format: str = "rle",
    ) -> list[dict]:
        """Automatic masks labelled by their nearest examples; records as ``/v1/predict``'s instances."""
        self._need_retrieval()
        masks, vecs = self._embedded_auto_masks(image, max_instances)
        if not masks:
            return []
        found = self.store.search(collection, vecs, top_k, embedder=self.embedder_id)
        return instances(masks, found, min_score, mask_format)

    def find_by_text(
        self, image: np.ndarray, text: str, max_masks: int = 3, candidates: int = 64, mask_format: str = "rle"
    ) -> list[dict]:
        """Automatic masks ranked by CLIP similarity of their faded crop to ``text`` (``text_score``)."""
        if self.embedder is None:
            raise ValueError("find_by_text needs an embedder")
        masks, vecs = self._embedded_auto_masks(image, candidates)
        return rank_by_text(masks, vecs, self.embedder.embed_texts([text])[0], max_masks, mask_format)

    def _embedded_auto_masks(self, image: np.ndarray, limit: int) -> tuple[list[AutoMask], np.ndarray]:
        """The best ``limit`` automatic masks and the (N, D) embeddings of their faded crops."""
        masks = self.auto_masks(image)[:limit]
        if not masks:
            return [], np.zeros((0, self.embedder.dim), np.float32)
        return masks, self.embedder.embed_images(self.crops(image, [decode_rle(m.rle) for m in masks]))

    def _need_retrieval(self) -> None:
        if self.embedder is None or self.store is None:
            raise ValueError("examples and predict need an embedder and a store")
