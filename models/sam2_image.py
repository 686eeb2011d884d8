"""SAM 2 model builder and image encoder; the mask decoder is in ``models/sam2_decoder.py``.

The two are split so that each can run (and batch) on its own. The computation is exactly that of sam2's
``SAM2ImagePredictor`` (``sam2/sam2_image_predictor.py``): ``set_image`` becomes
:meth:`Sam2ImageEncoder.encode_batch`, with the same preprocessing (``SAM2Transforms``), and the features
it keeps become :class:`ImageFeatures`; ``predict`` becomes
:meth:`models.sam2_decoder.Sam2MaskDecoder.predict_batch`. The only difference is batching: many images
per encoder call.

Coordinates everywhere are pixels of the original image, (x, y) with x to the right and y down;
boxes are XYXY.

Pure torch/numpy: no file or network I/O. Weights arrive as a state dict (see ``deployments.runtime.weights``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.accel import AccelSettings, accelerate
from models.registry import get_model_spec
from models.segmenter import EncoderParts, build_with_weights, check_images


def build_sam2_model(
    name: str,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    seed: int | None = None,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Build a SAM 2.1 model (``SAM2Base``) from the registry, with given or seeded random weights.

    Args:
        name: registry name, e.g. ``"sam2.1_hiera_tiny"``.
        state_dict: the model's weights (the ``"model"`` entry of Meta's checkpoints). Loaded strictly.
        seed: with ``state_dict=None``, the seed of the random initialisation (required then).
        device: torch device to place the model on.

    Returns:
        The ``SAM2Base`` in eval mode, built with sam2's ``build_sam2`` (its default image-predictor
        post-processing overrides included).

    Raises:
        ValueError: unknown ``name``, or neither ``state_dict`` nor ``seed`` given.
        RuntimeError: ``state_dict`` has missing or unexpected keys or wrong shapes.
    """
    spec = get_model_spec(name, "sam2")
    if state_dict is None and seed is None:  # before sam2's import (it sets up Hydra)
        raise ValueError("build_sam2_model needs a state_dict, or a seed for random weights")
    from sam2.build_sam import build_sam2  # heavy, and sets up Hydra: import on use only

    def make():
        return build_sam2(spec.config, ckpt_path=None, device="cpu", mode="eval")

    return build_with_weights(make, state_dict, seed, device, "build_sam2_model")


@dataclass(frozen=True)
class ImageFeatures:
    """SAM 2 features of one image, as ``SAM2ImagePredictor.set_image`` keeps them (batch dim dropped).

    Attributes:
        image_embed: (256, 64, 64) float32, the conditioned lowest-resolution embedding.
        high_res_feats: ((32, 256, 256), (64, 128, 128)) float32, the projected FPN levels 0 and 1.
        orig_hw: (height, width) of the original image in pixels.
    """

    image_embed: np.ndarray
    high_res_feats: tuple[np.ndarray, np.ndarray]
    orig_hw: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Total size of the arrays in bytes (about 16.8 MB for every SAM 2.1 size at 1024 px)."""
        return self.image_embed.nbytes + sum(f.nbytes for f in self.high_res_feats)


def feature_nbytes(image_size: int = 1024) -> int:
    """Bytes of one image's :class:`ImageFeatures` for a model of input side ``image_size`` (float32:
    256 x (s/16)^2 + 32 x (s/4)^2 + 64 x (s/8)^2 values; 16.8 MB at 1024)."""
    return 4 * (256 * (image_size // 16) ** 2 + 32 * (image_size // 4) ** 2 + 64 * (image_size // 8) ** 2)


class Sam2ImageEncoder(EncoderParts):
    """Batched SAM 2 image encoder (Hiera trunk + FPN neck + the decoder's high-res projections).

    Args:
        model: a ``SAM2Base`` from :func:`build_sam2_model`.
        accel: bf16 autocast / ``torch.compile`` / TensorRT for ``model.forward_image`` (trunk, neck and
            the high-res projections); see :mod:`models.accel`. None: fp32 eager.
        on_fallback: called with a one-line message for each speed-up given up (the caller logs it).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        accel: AccelSettings | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        from sam2.utils.transforms import SAM2Transforms

        self.model = model
        self.transforms = SAM2Transforms(resolution=model.image_size, mask_threshold=0.0)
        s = model.image_size
        # Spatial sizes of the three feature levels, as in SAM2ImagePredictor._bb_feat_sizes.
        self._feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
        self._accelerated = accelerate(model.forward_image, self.device, accel, on_fallback, "image encoder")

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def encode_batch(self, images: Sequence[np.ndarray]) -> list[ImageFeatures]:
        """Encode several images in one forward pass.

        Args:
            images: each (H, W, 3) uint8 RGB in [0, 255]; sizes may differ (each is resized to
                ``model.image_size`` squared, as ``SAM2ImagePredictor.set_image_batch`` does).

        Returns:
            One :class:`ImageFeatures` per image, in order.

        Raises:
            ValueError: an image is not (H, W, 3) uint8 with H, W > 0.
        """
        if not images:
            return []
        check_images(images)
        batch = self.transforms.forward_batch(list(images)).to(self.device)
        backbone_out = self._accelerated(batch)
        _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        n = batch.shape[0]
        feats = [
            feat.permute(1, 2, 0).reshape(n, -1, *size).float().cpu().numpy()
            for feat, size in zip(vision_feats, self._feat_sizes)
        ]
        out = [
            ImageFeatures(
                image_embed=feats[2][i],
                high_res_feats=(feats[0][i], feats[1][i]),
                orig_hw=(int(images[i].shape[0]), int(images[i].shape[1])),
            )
            for i in range(n)
        ]
        assert len(out) == len(images)
        return out

