"""Shared fixtures: real photos from ../shared/data, and a seeded random-weight SAM 2.1 tiny checkpoint file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file for local test clusters

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TRUCK_BOX = [75, 275, 1725, 850]  # SAM 2's own image-predictor example
MODEL_ID = "sam2.1_hiera_tiny"
SEED = 1234


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        if parts[0] in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, parts[0]))


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test where that folder is absent. With
    ``SAMGRAPH_REQUIRE_DATA=1`` (set by ``.ci/run``) a missing file fails the test instead, so CI cannot
    pass by skipping."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("SAMGRAPH_REQUIRE_DATA") == "1":
            pytest.fail(f"{path} not present and SAMGRAPH_REQUIRE_DATA=1")
        pytest.skip(f"{path} not present (../shared/data is beside the checkout on project machines)")
    return path


@pytest.fixture(scope="session")
def truck_path() -> Path:
    return shared_file("images", "truck.jpg")


@pytest.fixture(scope="session")
def truck_rgb(truck_path) -> np.ndarray:
    from PIL import Image

    with Image.open(truck_path) as im:
        return np.asarray(im.convert("RGB"))


#: The last bias of SAM 2's object-score head in the test checkpoint (see ``tiny_checkpoint``).
OBJECT_SCORE_BIAS = 10.0
#: The object-score head of ``flicker_checkpoint``: its last layer's weights times this scale, and this bias.
FLICKER_HEAD_SCALE = 1000.0
FLICKER_HEAD_BIAS = 109.0


def _write_tiny_checkpoint(path: Path, head_bias: float, head_scale: float = 1.0) -> Path:
    """Save SAM 2.1 tiny's seeded random weights (``SEED``) as a Meta-format checkpoint ``{"model": ...}``,
    with the last layer of the object-score head (``sam_mask_decoder.pred_obj_score_head.layers.2``)
    scaled by ``head_scale`` and its bias set to ``head_bias``."""
    import torch

    from models.sam2_image import build_sam2_model

    state = build_sam2_model(MODEL_ID, seed=SEED).state_dict()
    head = sorted(k for k in state if k.startswith("sam_mask_decoder.pred_obj_score_head.") and k.endswith(".bias"))
    assert head, "no object-score head in the state dict"
    state[head[-1]].fill_(head_bias)  # the MLP's last layer (layers.2)
    state[head[-1].removesuffix("bias") + "weight"].mul_(head_scale)
    torch.save({"model": state}, path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A Meta-format checkpoint file ``{"model": state_dict}`` of SAM 2.1 tiny with seeded random weights.

    One change to the random weights: the last bias of the object-score head
    (``sam_mask_decoder.pred_obj_score_head``) is set to ``OBJECT_SCORE_BIAS``. With random weights that
    head says "no object", and the video predictor then blanks every mask; the image path ignores the
    head, so its answers are unchanged.
    """
    return _write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny_random.pt", OBJECT_SCORE_BIAS)


@pytest.fixture(scope="session")
def flicker_checkpoint(tmp_path_factory) -> Path:
    """Like ``tiny_checkpoint``, but the video predictor sees the object on some frames and not on others.

    The random object-score head's logit (before its bias) is about -0.108 and moves by a few thousandths
    with the frame and with what the memory holds. Here its last layer is scaled by
    ``FLICKER_HEAD_SCALE`` and its bias is ``FLICKER_HEAD_BIAS``, which spreads those logits over a few
    units either side of 0: on the bedroom clip (every 8th frame, at ``image_size=256``) the tracked
    objects are absent on some frames and present on others, as real objects that leave the view or are
    occluded. Tests using it check that both happen.
    """
    path = tmp_path_factory.mktemp("ckpt_flicker") / "sam2.1_hiera_tiny_random_flicker.pt"
    return _write_tiny_checkpoint(path, FLICKER_HEAD_BIAS, FLICKER_HEAD_SCALE)


@pytest.fixture(scope="session")
def reference_predictor(tiny_checkpoint):
    """Meta's ``SAM2ImagePredictor`` built by sam2's own ``build_sam2`` from the same checkpoint file."""
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from models.registry import get_model_spec

    model = build_sam2(get_model_spec(MODEL_ID, "sam2").config, ckpt_path=str(tiny_checkpoint), device="cpu")
    return SAM2ImagePredictor(model)


BEDROOM_BOX = [300, 0, 500, 400]  # Meta's video_predictor_example notebook, frame 0
BEDROOM_POINT = [460, 60]


def bedroom_frames(n: int, step: int = 1) -> list[Path]:
    """``n`` JPEG frames (960x540) of the bedroom clip (200 frames), every ``step``-th from frame 0, or skip."""
    folder = shared_file("video", "bedroom", "frames")
    return [folder / f"{i * step:05d}.jpg" for i in range(n)]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
