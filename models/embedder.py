"""CLIP image and text towers (open_clip) as an embedder: crops and texts to L2-normalised vectors.

The computation is exactly what a user of open_clip writes::

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=tag)
    tokenizer = open_clip.get_tokenizer(model_name)
    F.normalize(model.encode_image(torch.stack([preprocess(Image.fromarray(x)) for x in images])), dim=-1)
    F.normalize(model.encode_text(tokenizer(texts)), dim=-1)

except that the weights arrive as a state dict (see ``deployments.runtime.clip_weights``) or are seeded random, so
nothing is downloaded here. Image and text vectors share one space: their dot product is the cosine
similarity CLIP was trained on.

It is the ``open_clip`` family of the embedder seam (:class:`OpenClipFamily`, registered in
:data:`models.embedders.EMBEDDERS`).

Pure torch/numpy: no file or network I/O, and open_clip is imported only inside the functions that need it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.embedders import EmbedderFamily

DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "laion2b_s34b_b79k"
_COMMON_MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-SO400M-14-SigLIP", "RN50", "convnext_base_w")


def list_clip_models() -> list[str]:
    """Architecture names open_clip knows (``open_clip.list_models()``), e.g. ``"ViT-B-32"``."""
    import open_clip

    return open_clip.list_models()


def list_clip_pretrained_tags(model_name: str) -> list[str]:
    """Pretrained tags open_clip publishes for ``model_name``, e.g. ``"laion2b_s34b_b79k"`` for ViT-B-32."""
    import open_clip

    return open_clip.list_pretrained_tags_by_model(model_name)


def check_clip_model_name(model_name: str) -> None:
    """Raise ``ValueError`` listing a few valid names when ``model_name`` is not an open_clip architecture."""
    names = list_clip_models()
    if model_name in names:
        return
    shown = difflib.get_close_matches(str(model_name), names, n=5) or [n for n in _COMMON_MODELS if n in names]
    raise ValueError(
        f"unknown CLIP model {model_name!r}; valid names include {', '.join(shown)} "
        f"({len(names)} in all: see open_clip.list_models())"
    )


def check_clip_pretrained_tag(model_name: str, pretrained: str) -> None:
    """Raise ``ValueError`` listing the valid tags when open_clip publishes no ``pretrained`` for ``model_name``."""
    import open_clip

    if not open_clip.pretrained.is_pretrained_cfg(model_name, pretrained):
        tags = list_clip_pretrained_tags(model_name)
        raise ValueError(
            f"unknown pretrained tag {pretrained!r} for CLIP model {model_name!r}; valid tags: "
            f"{', '.join(tags) if tags else 'none (this architecture has no published weights)'}"
        )


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP: an open_clip architecture and the pretrained tag whose weights and preprocessing it uses.

    Attributes:
        model_name: open_clip architecture, one of ``open_clip.list_models()``.
        pretrained: open_clip pretrained tag for ``model_name`` (``open_clip.list_pretrained_tags_by_model``).
            It names the weights the ``pretrained`` source downloads and selects the matching image
            preprocessing (mean, std, interpolation, resize mode). ``""``: no tag, open_clip's default
            preprocessing, and only file or random weights.
    """

    model_name: str = DEFAULT_CLIP_MODEL
    pretrained: str = DEFAULT_CLIP_PRETRAINED

    def __post_init__(self) -> None:
        check_clip_model_name(self.model_name)
        if not isinstance(self.pretrained, str):
            raise ValueError(f"pretrained must be a string tag; got {self.pretrained!r}")
        if self.pretrained:
            check_clip_pretrained_tag(self.model_name, self.pretrained)

    @property
    def model_id(self) -> str:
        """``"<model_name>/<pretrained>"``, e.g. ``"ViT-B-32/laion2b_s34b_b79k"``
        (``model_name`` alone without a tag)."""
        return f"{self.model_name}/{self.pretrained}" if self.pretrained else self.model_name


def _preprocess_overrides(model_name: str, pretrained: str | None) -> dict:
    """The image preprocessing open_clip uses for the tag, as ``create_model_and_transforms`` keyword arguments."""
    if not pretrained:
        return {}
    import open_clip

    check_clip_pretrained_tag(model_name, pretrained)
    cfg = open_clip.pretrained.get_pretrained_cfg(model_name, pretrained)
    keys = {
        "mean": "image_mean",
        "std": "image_std",
        "interpolation": "image_interpolation",
        "resize_mode": "image_resize_mode",
    }
    return {arg: cfg[key] for key, arg in keys.items() if cfg.get(key) is not None}


def _to_open_clip_layout(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The lossless layout fixes of open_clip's ``load_checkpoint`` (renames and reshapes, no new values).

    Third-party layouts (MobileCLIP) are converted, an old-format text tower is renamed for custom-text
    models, a scalar/1-d ``logit_scale``/``logit_bias`` takes the model's shape and the obsolete
    ``position_ids`` buffer of HF text towers is dropped. Unlike ``load_checkpoint`` nothing is invented
    (no zero ``logit_bias``) or interpolated (no position-embedding resize): such checkpoints fail strictly.
    """
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    state = convert_state_dict(model, dict(state_dict))
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state and isinstance(target, torch.Tensor) and state[key].ndim != target.ndim:
            state[key] = state[key].reshape(target.shape)
    position_ids = "text.transformer.embeddings.position_ids"
    if position_ids in state and position_ids not in model.state_dict():
        del state[position_ids]
    return state


def build_clip(
    model_name: str,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    seed: int | None = None,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
) -> ClipEmbedder:
    """Build an open_clip CLIP model with its eval preprocessing and tokenizer, from given or seeded random weights.

    Args:
        model_name: open_clip architecture, e.g. ``"ViT-B-32"`` (``open_clip.list_models()``).
        state_dict: the model's weights in open_clip's layout (an open_clip checkpoint's state dict, any
            ``"module."`` prefix removed). Loaded strictly.
        seed: with ``state_dict=None``, the seed of the random initialisation (required then).
        pretrained: an open_clip pretrained tag whose image preprocessing to use (mean, std, interpolation,
            resize mode), as ``create_model_and_transforms(model_name, pretrained=tag)`` would; None uses
            the architecture's defaults. Nothing is downloaded.
        device: torch device to place the model on.

    Returns:
        A :class:`ClipEmbedder` holding the model in eval mode, the eval transform and the tokenizer.

    Raises:
        ValueError: unknown ``model_name`` or ``pretrained`` tag, or neither ``state_dict`` nor ``seed`` given.
        RuntimeError: ``state_dict`` has missing or unexpected keys or wrong shapes.
    """
    check_clip_model_name(model_name)
    if state_dict is None and seed is None:
        raise ValueError("build_clip needs a state_dict, or a seed for random weights")
    import open_clip

    overrides = _preprocess_overrides(model_name, pretrained)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        # pretrained=None and no tower weights: open_clip downloads nothing.
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=None, pretrained_image=False, pretrained_text=False, device="cpu", **overrides
        )
    if state_dict is not None:
        model.load_state_dict(_to_open_clip_layout(model, state_dict), strict=True)
    return ClipEmbedder(model.to(device).eval(), preprocess, open_clip.get_tokenizer(model_name))


def _check_image(image: np.ndarray, index: int) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image {index} must be a numpy array; got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image {index} must be (H, W, 3) uint8 RGB; got {image.shape} {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image {index} is empty: {image.shape}")


class ClipEmbedder:
    """CLIP image and text embeddings, L2-normalised, in one shared space.

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP`` in eval mode (from :func:`build_clip`).
        preprocess: the eval transform from ``open_clip.create_model_and_transforms``: PIL RGB image ->
            (3, S, S) float32 tensor, resized, centre-cropped and normalised.
        tokenizer: ``open_clip.get_tokenizer(model_name)``: list of str -> (N, context_length) int64 tokens.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[..., torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self._dim = _embedding_dim(model)

    @property
    def dim(self) -> int:
        """Embedding dimension (512 for ViT-B-32)."""
        return self._dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Apply the model's eval transform to each image, as ``preprocess(Image.fromarray(image))``.

        Args:
            images: N arrays, each (H, W, 3) uint8 RGB in [0, 255]; sizes may differ.

        Returns:
            (N, 3, S, S) float32 on the model's device, S the model's input side (224 for ViT-B-32).

        Raises:
            ValueError: an image that is not a non-empty (H, W, 3) uint8 array.
        """
        from PIL import Image

        for i, image in enumerate(images):
            _check_image(image, i)
        return torch.stack([self.preprocess(Image.fromarray(image)) for image in images]).to(self.device)

    @torch.inference_mode()
    def embed_images_torch(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed preprocessed images.

        Args:
            pixels: (N, 3, S, S) float32 from :meth:`preprocess_images`.

        Returns:
            (N, dim) float32, rows of unit L2 norm, on the model's device.
        """
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embed several images (crops) in one forward pass.

        Args:
            images: N arrays, each (H, W, 3) uint8 RGB in [0, 255]; sizes may differ (each is resized and
                centre-cropped by ``preprocess``).

        Returns:
            (N, dim) float32, rows of unit L2 norm; (0, dim) for no images.

        Raises:
            ValueError: an image that is not a non-empty (H, W, 3) uint8 array.
        """
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_images_torch(self.preprocess_images(images)).cpu().numpy()

    def embed_image(self, image: np.ndarray) -> np.ndarray:
        """Embed one (H, W, 3) uint8 RGB image; returns (dim,) float32 of unit L2 norm."""
        return self.embed_images([image])[0]

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed several texts in one forward pass.

        Args:
            texts: N non-blank strings; each is tokenized by the model's tokenizer and truncated to its
                context length (77 tokens for ViT-B-32).

        Returns:
            (N, dim) float32, rows of unit L2 norm; (0, dim) for no texts.

        Raises:
            ValueError: ``texts`` is a bare string, or an item is not a string or is blank.
        """
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of strings, not one string (use embed_text)")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text {i} must be a non-blank string; got {text!r}")
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu().numpy()

    def embed_text(self, text: str) -> np.ndarray:
        """Embed one non-blank string; returns (dim,) float32 of unit L2 norm."""
        return self.embed_texts([text])[0]


def _embedding_dim(model: torch.nn.Module) -> int:
    """Output dimension of the image tower (equal to the text tower's in CLIP)."""
    dim = getattr(getattr(model, "visual", None), "output_dim", None)
    if isinstance(dim, int):
        return dim
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.Tensor):
        return int(projection.shape[-1])
    if isinstance(projection, torch.nn.Linear):
        return projection.out_features
    raise ValueError(f"cannot tell the embedding dimension of {type(model).__name__}")


class OpenClipFamily(EmbedderFamily):
    """open_clip's CLIP models behind the embedder seam (:mod:`models.embedders`): :func:`build_clip`."""

    name = "open_clip"

    def check(self, model_name: str, pretrained: str) -> None:
        """Raise ``ValueError`` listing valid names or tags (as :class:`ClipSpec`)."""
        ClipSpec(model_name, pretrained)

    def build(
        self,
        model_name: str,
        state_dict: Mapping[str, torch.Tensor] | None,
        *,
        seed: int | None,
        pretrained: str,
        device: str | torch.device = "cpu",
    ) -> ClipEmbedder:
        """A :class:`ClipEmbedder` (see :func:`build_clip`; ``pretrained`` ``""``: default preprocessing)."""
        return build_clip(model_name, state_dict, seed=seed, pretrained=pretrained or None, device=device)
