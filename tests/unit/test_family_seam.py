"""A fourth family is one module, one registry entry and a config: no change to deployments/ or the ingress.

The family here is a toy (a seeded brightness threshold inside the box, a disk around each click), defined
in this module and registered the way ``models/registry.py`` registers the shipped ones. It then runs
through the code every family goes through (app arguments, weights and pre-flight, the ``ImageEncoder``
and ``MaskDecoder`` replicas, the in-process API, the offline stages), which must answer its exact masks
and refuse what its capabilities do not include. A test also checks that no module of deployments/ or
serve_app/ imports a family's own modules, video tracking (SAM 2's) aside.
"""

from __future__ import annotations

import ast
import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import models.registry as registry
from models.prompts import PromptSpec
from models.segmenter import Capabilities, MaskPrediction, ModelSpec, SegmenterFamily

REPO = Path(__file__).resolve().parents[2]
TOY = "toy-1"
RADIUS = 2
WEIGHTS = {"kind": "random", "checkpoint": None, "seed": 3}


@dataclass(frozen=True)
class ToyFeatures:
    gray: np.ndarray  # (H, W) float32 in [0, 1]
    orig_hw: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.gray.nbytes


class ToyModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.threshold = torch.nn.Parameter(torch.rand(()))


class ToyEncoder:
    def encode_batch(self, images):
        return [ToyFeatures(im.mean(axis=2).astype(np.float32) / 255, im.shape[:2]) for im in images]

    def encode(self, image):
        return self.encode_batch([image])[0]

    def warm_up(self, batch_size=1):
        pass

    def accel_state(self):
        return {"precision": "fp32", "compiler": "eager"}


def toy_mask(features: ToyFeatures, prompt: PromptSpec, threshold: float) -> np.ndarray:
    """What the toy answers: pixels brighter than the threshold inside the box, and disks around clicks."""
    h, w = features.orig_hw
    mask = np.zeros((h, w), bool)
    if prompt.box_xyxy is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in prompt.box_xyxy)
        mask[y0:y1, x0:x1] = features.gray[y0:y1, x0:x1] > threshold
    yy, xx = np.mgrid[:h, :w]
    for (x, y), label in zip(prompt.point_coords if prompt.point_coords is not None else [], prompt.point_labels or []):
        disk = (xx - x) ** 2 + (yy - y) ** 2 <= RADIUS**2
        mask = mask | disk if label == 1 else mask & ~disk
    return mask


class ToyDecoder:
    image_size = 64

    def __init__(self, model: ToyModel) -> None:
        self.threshold = float(model.threshold)

    def predict_batch(self, requests):
        out = []
        for req in requests:
            preds = []
            for prompt in req.prompts:
                mask = toy_mask(req.features, prompt, self.threshold)[None]
                ones = np.ones(1, np.float32)
                preds.append(MaskPrediction(mask, ones, ones, np.zeros((1, 256, 256), np.float32)))
            out.append(preds)
        return out

    def warm_up(self):
        pass

    def accel_state(self):
        return {"precision": "fp32", "compiler": "eager"}


class ToyFamily(SegmenterFamily):
    name = "toy"
    capabilities = Capabilities(mask_input=False, multimask=False, automatic_masks=False)

    def build(self, spec, state_dict, *, seed, device):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed if seed is not None else 0)
            model = ToyModel()
        if state_dict is not None:
            model.load_state_dict(state_dict, strict=True)
        return model.eval()

    def encoder(self, model, accel=None, on_fallback=None, graph=None):
        return ToyEncoder()

    def decoder(self, model, settings=None, accel=None, on_fallback=None, graph=None):
        return ToyDecoder(model)

    def feature_nbytes(self, spec):
        return 4 * spec.image_size**2


@pytest.fixture
def toy(monkeypatch):
    """The toy family and its one model, registered as a shipped family is (a module path in FAMILIES)."""
    monkeypatch.setitem(registry.FAMILIES, "toy", f"{__name__}:ToyFamily")
    monkeypatch.setitem(registry.MODELS, TOY, ModelSpec(TOY, "toy", "toy", "", None, None, 0.0, image_size=64))
    registry._families.pop("toy", None)
    yield registry.get_family("toy")
    registry._families.pop("toy", None)


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)


def _threshold() -> float:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHTS["seed"])
        return float(torch.rand(()))


def test_the_registry_finds_the_fourth_family_and_the_app_args_accept_it(toy):
    from serve_app.config import AppArgs
    from serve_app.preflight import preflight

    assert registry.family_of(TOY) is toy and TOY in registry.list_models("toy")
    args = AppArgs.model_validate({"models": [{"model_id": "sam2.1_hiera_tiny"}, {"model_id": TOY, "weights": "random"}]})
    assert [m.model_id for m in args.served_models()] == ["sam2.1_hiera_tiny", TOY]
    assert args.video_model().model_id == "sam2.1_hiera_tiny"  # the toy tracks no video
    ready = preflight(AppArgs.model_validate({"models": [{"model_id": TOY, "weights": "random", "seed": 3}]}), clip=False, store=False)
    assert ready.models[TOY].kind == "random" and ready.models[TOY].seed == 3


def test_the_stage_replicas_serve_the_fourth_family_unchanged(toy, image):
    """The ImageEncoder and MaskDecoder replicas (run in process) load, encode, decode and report the toy,
    and refuse automatic masks and concept prompts (422 unsupported_by_model naming the field)."""
    import deployments.decoder as dec_mod
    import deployments.encoder as enc_mod
    from deployments.contracts import ConceptJob, DecodeJob
    from deployments.errors import UnsupportedByModel
    from models.amg import AmgSettings
    from models.masks import decode_rle
    from models.segmenter import ConceptPrompt

    encoder = enc_mod.ImageEncoder.func_or_class(TOY, WEIGHTS, device="cpu")
    decoder = dec_mod.MaskDecoder.func_or_class(TOY, WEIGHTS, device="cpu")
    assert encoder.info()["family"] == decoder.info()["family"] == "toy"
    assert decoder.info()["capabilities"] == toy.capabilities.as_dict() and decoder.info()["weights"] == "random"
    features = encoder._encoder.encode_batch([image])[0]
    box = PromptSpec(box_xyxy=np.array([10, 5, 50, 30], np.float32))
    click = PromptSpec(point_coords=np.array([[20.0, 20.0]], np.float32), point_labels=np.array([1], np.int32))
    job = DecodeJob((box, click), (False, False), "rle", 1)
    result = decoder._decode_sync([features], [job])[0]
    got = [decode_rle(r["masks"][0]["rle"]) for r in result.results]
    want = [toy_mask(features, p, _threshold()) for p in (box, click)]
    assert all(w.any() for w in want) and not np.array_equal(*want)  # non-vacuous: two different masks
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert result.model_id == TOY
    with pytest.raises(UnsupportedByModel) as info:
        asyncio.run(decoder.generate(features, AmgSettings()))
    assert (info.value.status, info.value.code, info.value.field) == (422, "unsupported_by_model", "amg")
    with pytest.raises(UnsupportedByModel, match="toy-1"):
        asyncio.run(decoder.concepts("0" * 64, ConceptJob((ConceptPrompt("cat"),), fields=("prompts[0]",))))


def test_the_in_process_api_and_offline_stages_serve_the_fourth_family(toy, image):
    from deployments.offline_stages import DecodeMasks, EncodeImages
    from models.masks import decode_rle
    from serve_app.local import LocalPipeline

    pipe = LocalPipeline(toy.encoder(None), toy.decoder(toy.build(None, None, seed=3, device="cpu")))
    [pred] = pipe.segment(image, [{"box_xyxy": [10, 5, 50, 30]}])
    features = ToyEncoder().encode(image)
    np.testing.assert_array_equal(pred.masks[0], toy_mask(features, PromptSpec(box_xyxy=np.array([10, 5, 50, 30], np.float32)), _threshold()))
    with pytest.raises(ValueError, match="no concept prompts"):
        pipe.find_concepts(image, ["cat"])

    rows = [{"image": image}]
    EncodeImages(TOY, WEIGHTS, device="cpu")._process(rows)
    click = PromptSpec(point_coords=np.array([[30.0, 10.0]], np.float32), point_labels=np.array([1], np.int32))
    rows[0].update(prompts=[{"ann_id": 7, "category_id": 1}], prompt_specs=[click], multimask=[False])
    DecodeMasks(TOY, WEIGHTS, device="cpu")._process(rows)
    np.testing.assert_array_equal(decode_rle(rows[0]["instances"][0]["rle"]), toy_mask(features, click, _threshold()))


FAMILY_MODULES = {"models.sam2_image", "models.sam2_decoder", "models.sam2_family", "models.sam3", "models.mobilesam"}
#: SAM 2's video tracker is the one video family: its deployment and runtime name it.
VIDEO_MODULES = {"deployments/video.py", "deployments/runtime/video_sessions.py", "deployments/runtime/model_weights.py"}


def test_no_stage_or_ingress_module_imports_a_family_module():
    """deployments/ and serve_app/ reach families through models.registry and models.segmenter only."""
    offenders = []
    for path in sorted([*(REPO / "deployments").rglob("*.py"), *(REPO / "serve_app").rglob("*.py")]):
        rel = path.relative_to(REPO).as_posix()
        if rel in VIDEO_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{rel}: {n}" for n in names if n in FAMILY_MODULES or n.split(".")[0] in ("sam2", "mobile_sam")]
    assert not offenders, offenders
