"""Test weights of the non-SAM-2 families, written as their released files are (a bare state dict for
MobileSAM's ``mobile_sam.pt``, safetensors for SAM 3), so that the service loads them through the real
path (``weights: file``, SHA-256, strict loading).

Seeded random weights answer vacuously (empty or full masks, no concept instance above 0.5), so a few
last layers are rescaled, as ``tests/conftest.py`` does for the SAM 2 test checkpoint:
``tests/unit/test_mobilesam.py`` (``checkpoint``) and :func:`models.sam3.non_vacuous_heads` say which and
why.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.registry import get_family, get_model_spec

#: MobileSAM: the output hypernetworks' last layer x30 and the IoU head's last bias +0.8 (see
#: ``tests/unit/test_mobilesam.py::checkpoint``).
MOBILE_SAM_HYPERNET_SCALE = 30.0
MOBILE_SAM_IOU_SHIFT = 0.8


def mobile_sam_state(seed: int) -> dict[str, torch.Tensor]:
    """MobileSAM's seeded random weights with the non-vacuous rescaling."""
    spec = get_model_spec("mobile_sam")
    state = get_family("mobile_sam").build(spec, None, seed=seed, device="cpu").state_dict()
    for key in state:
        if key.startswith("mask_decoder.output_hypernetworks_mlps.") and ".layers.2.w" in key:
            state[key].mul_(MOBILE_SAM_HYPERNET_SCALE)
    state["mask_decoder.iou_prediction_head.layers.2.bias"].add_(MOBILE_SAM_IOU_SHIFT)
    return state


def write_mobile_sam_checkpoint(directory: Path, seed: int) -> Path:
    """``mobile_sam.pt`` (a bare state dict, as the released file) in ``directory``."""
    path = directory / "mobile_sam.pt"
    torch.save(mobile_sam_state(seed), path)
    return path


def sam3_tiny_state(seed: int) -> dict[str, torch.Tensor]:
    """``sam3-tiny``'s seeded random weights with :func:`models.sam3.non_vacuous_heads`."""
    from models.sam3 import build_sam3_model, non_vacuous_heads

    return non_vacuous_heads(build_sam3_model("sam3-tiny", seed=seed).state_dict(), seed=seed)


def write_sam3_tiny_checkpoint(directory: Path, seed: int) -> Path:
    """``sam3-tiny.safetensors`` (the layout of facebook/sam3's ``model.safetensors``) in ``directory``."""
    from safetensors.torch import save_file

    path = directory / "sam3-tiny.safetensors"
    save_file({k: v.clone().contiguous() for k, v in sam3_tiny_state(seed).items()}, str(path))
    return path
