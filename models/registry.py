"""Registry of released models and their families: names, configs, official URLs and SHA-256 digests.

Every model is a :class:`models.segmenter.ModelSpec` whose ``family`` names a :class:`SegmenterFamily`
(:data:`FAMILIES`: family name -> the module and class that implement it, imported on first use). A fourth
family is one module under ``models/``, one entry in :data:`FAMILIES` and its entries in :data:`MODELS`.

Pure data, no I/O. Downloading and verifying lives in ``deployments.runtime.weights``.

SAM 2.1:

Source of the URLs: ``checkpoints/download_ckpts.sh`` in facebookresearch/sam2 (release 092824, SAM 2.1).
Source of the digests and sizes: the checksums pinned for the same 092824 URLs by micro-sam
(``micro_sam/v2/util.py``, ``HASHES``) and by Intel's geti-instant-learn (``utils/constants.py``,
``sha_sum``), which agree with each other; the Hugging Face mirrors ``facebook/sam2.1-hiera-*`` serve
byte-identical files.

MobileSAM:

Source of the URL: the README of ChaoningZhang/MobileSAM (``weights/mobile_sam.pt`` in the repository, the
file ``build_sam_vit_t(checkpoint=...)`` loads); the file is a bare state dict (``torch.load`` then
``load_state_dict`` in ``mobile_sam/build_sam.py``), so ``checkpoint_key=None``. The URL follows the
``master`` branch; the file there was last replaced on 2023-06-29 (commit a509aac, "Update for better
compability"; git blob 7ef2d090979fd9853adf17b7a99c8b94a1c5a6a7, unchanged in the 91 commits since).
Source of the digest: micro-sam pins it for ``vit_t`` ("the model with vit tiny backend from
ChaoningZhang/MobileSAM", ``micro_sam/util.py``, the pooch registry); independent projects pin the same
digest for the raw file at commits of ChaoningZhang/MobileSAM (f706ad9c, b01a9cce), one of them loading it
with ``torch.load(weights_only=True)``, and two record its size, 40,728,226 bytes. Not checked here
against a downloaded copy (the snapshot of the repository lacks the blob's content).

SAM 3 (:mod:`models.sam3`, through Hugging Face ``transformers``):

``sam3`` is ``facebook/sam3`` on the hub (gated: accept the licence, then ``HF_TOKEN``), the transformers
layout of ``Sam3VideoModel`` (``detector_model.*``, ``tracker_model.*``, ``tracker_neck.*``). No published
SHA-256 of its ``model.safetensors`` was found outside the hub, so ``sha256`` is None: the download is checked
against the digest the hub publishes for the file (its Git LFS pointer's object id; see
``deployments.runtime.model_weights.download_gated``). ``sam3-tiny`` is an
architecture only: no weights were released (``url`` is empty); it runs with seeded random weights, for tests
and CPU smoke runs.
"""

from __future__ import annotations

import importlib

from models.segmenter import ModelSpec, SegmenterFamily

_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
_SAM2_SOURCE = "facebookresearch/sam2 checkpoints/download_ckpts.sh (092824); digests: micro-sam, geti-instant-learn"
_MOBILE_SAM_SOURCE = "ChaoningZhang/MobileSAM README (weights/mobile_sam.pt); digest: micro-sam (vit_t)"


MODELS: dict[str, ModelSpec] = {
    c.name: c
    for c in (
        ModelSpec(
            family="sam2",
            checkpoint_key="model",
            source=_SAM2_SOURCE,
            name="sam2.1_hiera_tiny",
            config="configs/sam2.1/sam2.1_hiera_t.yaml",
            url=f"{_BASE_URL}/sam2.1_hiera_tiny.pt",
            sha256="7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
            size_bytes=156_008_466,
            params_m=38.9,
        ),
        ModelSpec(
            family="sam2",
            checkpoint_key="model",
            source=_SAM2_SOURCE,
            name="sam2.1_hiera_small",
            config="configs/sam2.1/sam2.1_hiera_s.yaml",
            url=f"{_BASE_URL}/sam2.1_hiera_small.pt",
            sha256="6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
            size_bytes=184_416_285,
            params_m=46.0,
        ),
        ModelSpec(
            family="sam2",
            checkpoint_key="model",
            source=_SAM2_SOURCE,
            name="sam2.1_hiera_base_plus",
            config="configs/sam2.1/sam2.1_hiera_b+.yaml",
            url=f"{_BASE_URL}/sam2.1_hiera_base_plus.pt",
            sha256="a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
            size_bytes=323_606_802,
            params_m=80.8,
        ),
        ModelSpec(
            family="sam2",
            checkpoint_key="model",
            source=_SAM2_SOURCE,
            name="sam2.1_hiera_large",
            config="configs/sam2.1/sam2.1_hiera_l.yaml",
            url=f"{_BASE_URL}/sam2.1_hiera_large.pt",
            sha256="2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
            size_bytes=898_083_611,
            params_m=224.4,
        ),
        ModelSpec(
            family="mobile_sam",
            name="mobile_sam",
            config="vit_t",
            url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            size_bytes=40_728_226,
            params_m=10.1,
            checkpoint_key=None,
            source=_MOBILE_SAM_SOURCE,
        ),
        ModelSpec(
            family="sam3",
            name="sam3",
            config="sam3_video",
            url="https://huggingface.co/facebook/sam3/resolve/main/model.safetensors",
            sha256=None,
            size_bytes=None,
            params_m=859.9,  # Sam3VideoModel(Sam3VideoConfig()), counted; the memory modules included
            image_size=1008,
            file_format="safetensors",
            gated=True,
            source="huggingface.co/facebook/sam3 (gated; transformers Sam3VideoModel layout; hub LFS digest)",
        ),
        ModelSpec(
            family="sam3",
            name="sam3-tiny",
            config="sam3_video_tiny",
            url="",
            sha256=None,
            size_bytes=None,
            params_m=2.2,
            image_size=224,
            file_format="safetensors",
            source="models/sam3.py tiny architecture: no released weights, seeded random weights only",
        ),
    )
}

#: The family of each name used in :data:`MODELS`: ``"module:Class"``, imported on first use.
FAMILIES: dict[str, str] = {
    "sam2": "models.sam2_family:Sam2Family",
    "sam3": "models.sam3:Sam3Family",
    "mobile_sam": "models.mobilesam:MobileSamFamily",
}

#: The model served when a config names none.
DEFAULT_MODEL = "sam2.1_hiera_tiny"

_families: dict[str, SegmenterFamily] = {}


def list_models(family: str | None = None) -> list[str]:
    """Names of the registered models (of one family when given), in registry order (smallest first
    within a family)."""
    return [n for n, spec in MODELS.items() if family is None or spec.family == family]


def get_model_spec(name: str, family: str | None = None) -> ModelSpec:
    """Look up a model by ``model_id`` (of one family when given).

    Raises:
        ValueError: ``name`` is not registered (for that family); the message lists the valid names.
    """
    spec = MODELS.get(name)
    if spec is None or (family is not None and spec.family != family):
        what = f"{family} model" if family else "model"
        raise ValueError(f"unknown {what} {name!r}; valid names: {', '.join(list_models(family))}")
    return spec


def get_family(name: str) -> SegmenterFamily:
    """The :class:`SegmenterFamily` named ``name`` (one instance per process, imported on first use).

    Raises:
        ValueError: unknown family; the message lists the valid ones.
    """
    return registered_instance(FAMILIES, _families, name, "model family")


def registered_instance(table: dict[str, str], instances: dict, name: str, kind: str):
    """The one instance of the class ``table[name]`` (``"module:Class"``, imported and built on first use,
    then kept in ``instances``): the lookup of every registry of classes named by config (model and
    embedder families, runtimes).

    Raises:
        ValueError: ``name`` is not in ``table``; the message names ``kind`` and lists the valid names.
    """
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(table)}")
    if name not in instances:
        module, cls = table[name].split(":")
        instances[name] = getattr(importlib.import_module(module), cls)()
    return instances[name]


def family_of(model_id: str) -> SegmenterFamily:
    """The family of the registered model ``model_id``.

    Raises:
        ValueError: unknown model; the message lists the valid names.
    """
    return get_family(get_model_spec(model_id).family)
