"""models.embedder, deployments.runtime.clip_weights and the Embedder deployment: CLIP embeddings with open_clip parity.

ViT-B-32 is built with seeded random weights (no downloads here); parity is checked against open_clip's
own path (``create_model_and_transforms`` + ``encode_image``/``encode_text``) loaded with the same state
dict, on the real photos in ../shared/data.
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deployments.runtime.clip_weights import (
    ClipWeightsSource,
    LoadedClip,
    clip_cache_dir,
    load_clip,
    load_embedder,
    preflight_clip,
    pull_pretrained,
    read_clip_checkpoint,
)
from deployments.runtime.weights import WeightsError, sha256_file
from models.embedder import ClipEmbedder, ClipSpec, build_clip
from tests.conftest import shared_file

MODEL = "ViT-B-32"
TAG = "laion2b_s34b_b79k"
DIM = 512
PHOTOS = ("truck.jpg", "dog.jpg", "groceries.jpg")
TEXTS = ["a truck", "a dog", "groceries on a table"]
ENV = ("SAMGRAPH_WEIGHTS", "SAMGRAPH_CLIP_CHECKPOINT", "SAMGRAPH_SAM2_CHECKPOINT", "SAMGRAPH_SEED")
RANDOM_ID = f"open_clip:{MODEL}:{TAG}@random:seed0"
HUB_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"  # open_clip's hf_hub entry for ViT-B-32/laion2b_s34b_b79k


@pytest.fixture(scope="module")
def clip() -> ClipEmbedder:
    return build_clip(MODEL, seed=0, pretrained=TAG)


@pytest.fixture(scope="module")
def state(clip) -> dict:
    return {k: v.clone() for k, v in clip.model.state_dict().items()}


@pytest.fixture(scope="module")
def reference(state):
    """open_clip's own model, transform and tokenizer, loaded with our state dict."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=None)
    model.load_state_dict(state, strict=True)
    return model.eval(), preprocess, open_clip.get_tokenizer(MODEL)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    from PIL import Image

    arrays = []
    for name in PHOTOS:
        with Image.open(shared_file("images", name)) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    return arrays


@pytest.fixture(scope="module")
def checkpoint_file(state, tmp_path_factory):
    """An open_clip-style checkpoint: a bare state dict saved with torch.save (~600 MB)."""
    path = tmp_path_factory.mktemp("clip_ckpt") / "vit_b_32_random.pt"
    torch.save(state, path)
    return path


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """An empty cache dir and huggingface_hub in offline mode (its flag is read at import, so patch it)."""
    import huggingface_hub.constants

    monkeypatch.setenv("SAMGRAPH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "cache"


def _assert_unit_rows(x: np.ndarray) -> None:
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


# --- parity with open_clip -------------------------------------------------------------------


def test_image_parity_with_open_clip(clip, reference, photos):
    from PIL import Image

    model, preprocess, _ = reference
    ours = clip.embed_images(photos)
    with torch.inference_mode():
        pixels = torch.stack([preprocess(Image.fromarray(x)) for x in photos])
        expected = F.normalize(model.encode_image(pixels), dim=-1).numpy()
    assert ours.shape == (len(photos), DIM) and ours.dtype == np.float32
    assert np.abs(ours - expected).max() <= 1e-5
    _assert_unit_rows(ours)
    # non-vacuous: the photos land on different vectors
    cos = ours @ ours.T
    assert cos[np.triu_indices(len(photos), 1)].max() < 0.9999


def test_text_parity_with_open_clip(clip, reference):
    model, _, tokenizer = reference
    ours = clip.embed_texts(TEXTS)
    with torch.inference_mode():
        expected = F.normalize(model.encode_text(tokenizer(TEXTS)), dim=-1).numpy()
    assert ours.shape == (len(TEXTS), DIM) and ours.dtype == np.float32
    assert np.abs(ours - expected).max() <= 1e-5
    _assert_unit_rows(ours)
    cos = ours @ ours.T
    assert cos[np.triu_indices(len(TEXTS), 1)].max() < 0.9999


def test_preprocess_is_open_clips(clip, reference):
    assert repr(clip.preprocess) == repr(reference[1])
    assert clip.dim == DIM


def test_batch_invariance(clip, photos):
    batch = clip.embed_images(photos)
    singles = np.stack([clip.embed_image(x) for x in photos])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    texts = clip.embed_texts(TEXTS)
    np.testing.assert_allclose(texts, np.stack([clip.embed_text(t) for t in TEXTS]), atol=1e-5)


def test_one_item_helpers_and_odd_sizes(clip):
    rng = np.random.default_rng(0)
    tiny = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tall = rng.integers(0, 256, (300, 40, 3), dtype=np.uint8)
    tall.setflags(write=False)  # arrays from Ray's object store are read-only
    for image in (tiny, tall):
        v = clip.embed_image(image)
        assert v.shape == (DIM,) and v.dtype == np.float32
        assert abs(np.linalg.norm(v) - 1) < 1e-5
    t = clip.embed_text("a photo of a truck")
    assert t.shape == (DIM,) and t.dtype == np.float32


def test_empty_inputs(clip):
    assert clip.embed_images([]).shape == (0, DIM)
    assert clip.embed_images([]).dtype == np.float32
    assert clip.embed_texts([]).shape == (0, DIM)


@pytest.mark.parametrize("texts", [[""], ["  \n\t"], ["a dog", ""], ["a dog", None], "a dog"])
def test_blank_or_bad_text_raises(clip, texts):
    with pytest.raises(ValueError):
        clip.embed_texts(texts)


def test_blank_text_one_item_raises(clip):
    with pytest.raises(ValueError, match="non-blank"):
        clip.embed_text(" ")


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((8, 8, 3), np.float32),
        np.zeros((0, 8, 3), np.uint8),
        [[[0, 0, 0]]],
    ],
    ids=["gray", "rgba", "float", "empty", "list"],
)
def test_bad_image_raises(clip, image):
    with pytest.raises(ValueError, match="image 0"):
        clip.embed_images([image])


# --- builder and spec ------------------------------------------------------------------------


def test_unknown_model_name_raises():
    with pytest.raises(ValueError, match="open_clip.list_models") as info:
        ClipSpec("ViT-B-33")
    assert "ViT-B-32" in str(info.value)
    with pytest.raises(ValueError, match="unknown CLIP model"):
        build_clip("not-a-model", seed=0)


def test_unknown_tag_raises():
    with pytest.raises(ValueError, match="laion2b_s34b_b79k"):
        ClipSpec(MODEL, "nope")
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        build_clip(MODEL, seed=0, pretrained="nope")


def test_spec_defaults_and_model_id():
    spec = ClipSpec()
    assert (spec.model_name, spec.pretrained) == (MODEL, TAG)
    assert spec.model_id == "ViT-B-32/laion2b_s34b_b79k"
    assert ClipSpec(MODEL, "").model_id == MODEL


def test_build_needs_weights_or_seed():
    with pytest.raises(ValueError, match="seed"):
        build_clip(MODEL)


def test_unexpected_key_raises(state):
    extra = dict(state)
    extra["bogus.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="bogus.weight"):
        build_clip(MODEL, extra)


def test_random_weights_deterministic_per_seed(clip, state, photos):
    again = load_clip(ClipSpec(MODEL, TAG), ClipWeightsSource(kind="random", seed=0))
    assert again.weights == "random"
    assert again.model_id == "ViT-B-32/laion2b_s34b_b79k"
    assert again.identity == RANDOM_ID  # the seed is part of it: another seed is another embedder
    for k, v in again.embedder.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    other = build_clip(MODEL, seed=1)
    assert not torch.equal(other.model.state_dict()["visual.proj"], state["visual.proj"])
    a, b = clip.embed_image(photos[0]), other.embed_image(photos[0])
    assert float(a @ b) < 0.9999
    # the global RNG is left alone
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_clip(MODEL, seed=7)
    assert torch.equal(torch.rand(3), expected)


# --- the embedder seam: registry and identity -----------------------------------------------


def test_registry_has_open_clip_and_lists_valid_families():
    from models.embedder import OpenClipFamily
    from models.embedders import EmbedderFamily, get_embedder_family, list_embedder_families

    assert list_embedder_families() == ["open_clip"]
    family = get_embedder_family("open_clip")
    assert isinstance(family, OpenClipFamily) and isinstance(family, EmbedderFamily)
    assert get_embedder_family("open_clip") is family  # one per process
    with pytest.raises(ValueError, match=r"unknown embedder family 'siglip'; valid: open_clip"):
        get_embedder_family("siglip")
    with pytest.raises(ValueError, match="unknown CLIP model"):
        family.check("ViT-B-33", "")
    with pytest.raises(ValueError, match="unknown embedder family"):
        load_embedder("siglip", MODEL, TAG, ClipWeightsSource(kind="random", seed=0))


def test_family_builds_what_build_clip_builds(clip, state, photos):
    """The seam adds nothing: the family's embedder is ``build_clip``'s, vector for vector."""
    from models.embedders import TextImageEmbedder, get_embedder_family

    built = get_embedder_family("open_clip").build(MODEL, state, seed=None, pretrained=TAG, device="cpu")
    assert isinstance(built, TextImageEmbedder) and built.dim == DIM
    np.testing.assert_array_equal(built.embed_images(photos[:1]), clip.embed_images(photos[:1]))
    np.testing.assert_array_equal(built.embed_texts(TEXTS[:1]), clip.embed_texts(TEXTS[:1]))


def test_identity_names_family_architecture_tag_and_weights():
    from models.embedders import embedder_identity, parse_identity, weights_id

    sha = "0123456789abcdef" * 4
    assert weights_id(sha256=sha) == f"sha256:{sha}" and weights_id(seed=3) == "random:seed3"
    identity = embedder_identity("open_clip", MODEL, TAG, weights_id(sha256=sha))
    assert identity == f"open_clip:ViT-B-32:laion2b_s34b_b79k@sha256:{sha}"
    assert parse_identity(identity) == {"family": "open_clip", "model_name": MODEL, "pretrained": TAG, "weights": f"sha256:{sha}"}
    assert embedder_identity("open_clip", MODEL, "", "random:seed0") == "open_clip:ViT-B-32:@random:seed0"
    # every part tells embedders apart, even at the same dimension
    variants = {
        embedder_identity("open_clip", MODEL, TAG, "random:seed0"),
        embedder_identity("open_clip", MODEL, TAG, "random:seed1"),
        embedder_identity("open_clip", MODEL, "openai", "random:seed0"),
        embedder_identity("open_clip", "ViT-B-16", TAG, "random:seed0"),
        embedder_identity("open_clip", MODEL, TAG, f"sha256:{sha}"),
    }
    assert len(variants) == 5
    for bad in (("siglip", MODEL, TAG, "random:seed0"), ("open_clip", "a:b", TAG, "random:seed0"),
                ("open_clip", MODEL, TAG, "random"), ("open_clip", MODEL, TAG, "sha256:XY"), ("open_clip", "", TAG, "random:seed0")):  # fmt: skip
        with pytest.raises(ValueError):
            embedder_identity(*bad)
    for bad in ("open_clip:ViT-B-32", "a:b:c:d@random:seed0", "open_clip:ViT-B-32:x@pretrained"):
        with pytest.raises(ValueError):
            parse_identity(bad)
    with pytest.raises(ValueError):
        weights_id(sha256=sha, seed=0)


# --- weights: checkpoint files ---------------------------------------------------------------


def test_load_clip_from_file(clip, state, checkpoint_file, photos):
    loaded = load_clip(ClipSpec(MODEL, TAG), ClipWeightsSource(kind="file", checkpoint=str(checkpoint_file)))
    assert loaded.identity == f"open_clip:{MODEL}:{TAG}@sha256:{sha256_file(checkpoint_file)}"
    assert isinstance(loaded, LoadedClip)
    assert loaded.weights == "sha256:" + sha256_file(checkpoint_file)
    assert loaded.model_id == "ViT-B-32/laion2b_s34b_b79k"
    assert not loaded.embedder.model.training
    np.testing.assert_array_equal(loaded.embedder.embed_images(photos), clip.embed_images(photos))
    np.testing.assert_array_equal(loaded.embedder.embed_texts(TEXTS), clip.embed_texts(TEXTS))


def test_checkpoint_with_missing_key_raises(state, tmp_path):
    partial = {k: v for k, v in state.items() if k != "text_projection"}
    path = tmp_path / "partial.pt"
    torch.save(partial, path)
    with pytest.raises(RuntimeError, match="text_projection"):
        load_clip(ClipSpec(MODEL, TAG), ClipWeightsSource(kind="file", checkpoint=str(path)))


def test_read_checkpoint_formats(tmp_path):
    from safetensors.torch import save_file

    t = torch.arange(6.0).reshape(2, 3)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {"module.a": t, "module.b.c": t + 1}, "epoch": 3}, wrapped)
    sd, digest = read_clip_checkpoint(wrapped)
    assert sorted(sd) == ["a", "b.c"] and torch.equal(sd["a"], t)
    assert digest == sha256_file(wrapped)
    st = tmp_path / "weights.safetensors"
    save_file({"a": t}, str(st))
    sd, digest = read_clip_checkpoint(st)
    assert list(sd) == ["a"] and torch.equal(sd["a"], t) and digest == sha256_file(st)


class _NotAllowed:
    """A class outside every torch release's ``weights_only`` allow-list."""


def test_read_checkpoint_rejects_bad_files(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        read_clip_checkpoint(tmp_path / "nope.pt")
    not_tensors = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_tensors)
    with pytest.raises(WeightsError, match="state dict"):
        read_clip_checkpoint(not_tensors)
    # Refused either by torch's weights_only unpickler or by our check for a dict of tensors, depending
    # on the torch release (2.14 admits a pickled ValueError, 2.15 does not): assert the refusal and
    # which file was refused, not torch's words.
    pickled = tmp_path / "object.pt"
    torch.save({"a": ValueError("not a tensor")}, pickled)
    with pytest.raises(WeightsError, match=re.escape(str(pickled))):
        read_clip_checkpoint(pickled)
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": _NotAllowed()}, foreign)  # no weights_only unpickler admits this class
    with pytest.raises(WeightsError, match=re.escape(str(foreign))) as info:
        read_clip_checkpoint(foreign)
    assert "weights_only" in str(info.value)  # our message says how it was loaded
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors")
    with pytest.raises(WeightsError):
        read_clip_checkpoint(garbage)


# --- weights: sources ------------------------------------------------------------------------


def test_resolve_defaults(clean_env):
    assert ClipWeightsSource.resolve() == ClipWeightsSource(kind="pretrained", checkpoint=None, seed=0)
    # SAM 2's checkpoint variable is not CLIP's
    clean_env.setenv("SAMGRAPH_SAM2_CHECKPOINT", "/x/sam2.pt")
    assert ClipWeightsSource.resolve().kind == "pretrained"


def test_resolve_env(clean_env):
    clean_env.setenv("SAMGRAPH_CLIP_CHECKPOINT", "/ckpt/clip.pt")
    assert ClipWeightsSource.resolve() == ClipWeightsSource(kind="file", checkpoint="/ckpt/clip.pt")
    clean_env.setenv("SAMGRAPH_WEIGHTS", "random")
    clean_env.setenv("SAMGRAPH_SEED", "7")
    src = ClipWeightsSource.resolve()
    assert (src.kind, src.seed) == ("random", 7)
    # explicit arguments win over the environment
    assert ClipWeightsSource.resolve(weights="pretrained", seed=3) == ClipWeightsSource(
        kind="pretrained", checkpoint="/ckpt/clip.pt", seed=3
    )
    clean_env.setenv("SAMGRAPH_WEIGHTS", "registry")
    assert ClipWeightsSource.resolve().kind == "pretrained"
    src = ClipWeightsSource.resolve(seed=5)
    assert src.as_dict() == {"kind": "pretrained", "checkpoint": "/ckpt/clip.pt", "seed": 5}
    assert ClipWeightsSource(**src.as_dict()) == src


def test_resolve_rejects_bad_values(clean_env):
    clean_env.setenv("SAMGRAPH_SEED", "x")
    with pytest.raises(ValueError, match="SAMGRAPH_SEED"):
        ClipWeightsSource.resolve()
    clean_env.delenv("SAMGRAPH_SEED")
    clean_env.setenv("SAMGRAPH_WEIGHTS", "huggingface")
    with pytest.raises(ValueError, match="pretrained"):
        ClipWeightsSource.resolve()
    clean_env.setenv("SAMGRAPH_WEIGHTS", "file")
    with pytest.raises(ValueError, match="SAMGRAPH_CLIP_CHECKPOINT"):
        ClipWeightsSource.resolve()
    assert ClipWeightsSource(kind="registry").kind == "pretrained"


def test_preflight(tmp_path, checkpoint_file):
    spec = ClipSpec(MODEL, TAG)
    with pytest.raises(WeightsError, match="SAMGRAPH_CLIP_CHECKPOINT"):
        preflight_clip(spec, ClipWeightsSource(kind="file", checkpoint=str(tmp_path / "missing.pt")))
    preflight_clip(spec, ClipWeightsSource(kind="file", checkpoint=str(checkpoint_file)))
    preflight_clip(spec, ClipWeightsSource(kind="random"))


def test_pretrained_without_network_raises(hub_offline, monkeypatch):
    """Offline with an empty cache, both the loader and the pre-flight refuse without opening a socket."""
    import socket

    attempts: list[object] = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    spec = ClipSpec(MODEL, TAG)
    assert clip_cache_dir() == hub_offline / "open_clip"
    with pytest.raises(WeightsError) as info:
        load_clip(spec, ClipWeightsSource(kind="pretrained"))
    msg = str(info.value)
    assert "SAMGRAPH_CLIP_CHECKPOINT" in msg and "SAMGRAPH_WEIGHTS=random" in msg
    assert "ViT-B-32/laion2b_s34b_b79k" in msg
    with pytest.raises(WeightsError, match="SAMGRAPH_CLIP_CHECKPOINT"):
        preflight_clip(spec, ClipWeightsSource(kind="registry"))
    assert attempts == []  # no download tried, so no retry loop or network timeout to wait out


def test_pretrained_without_tag_raises():
    with pytest.raises(ValueError, match="pretrained tag"):
        load_clip(ClipSpec(MODEL, ""), ClipWeightsSource(kind="pretrained"))


def test_pretrained_found_in_cache_offline(hub_offline, clip, state, photos):
    """A file in open_clip's (Hugging Face) cache layout is used offline: safetensors, strict, sha256 reported."""
    from safetensors.torch import save_file

    repo = clip_cache_dir() / ("models--" + HUB_REPO.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    path = snapshot / "open_clip_model.safetensors"
    save_file(state, str(path))

    spec = ClipSpec(MODEL, TAG)
    assert pull_pretrained(spec) == path
    preflight_clip(spec, ClipWeightsSource(kind="pretrained"))
    loaded = load_clip(spec, ClipWeightsSource(kind="pretrained"))
    assert loaded.weights == "sha256:" + sha256_file(path)
    np.testing.assert_array_equal(loaded.embedder.embed_images(photos[:1]), clip.embed_images(photos[:1]))


# --- the Embedder deployment, without Ray ----------------------------------------------------


@pytest.fixture
def embedder_replica(clip, monkeypatch):
    """``Embedder``'s class with ``load_embedder`` replaced by one returning the module's model."""
    import deployments.embedder as mod

    calls = []

    def fake_load_embedder(family, model_name, pretrained, source, device="cpu"):
        calls.append(((family, model_name, pretrained), source, device))
        return LoadedClip(clip, ClipSpec(model_name, pretrained).model_id, "random", RANDOM_ID)

    monkeypatch.setattr(mod, "load_embedder", fake_load_embedder)
    replica = mod.Embedder.func_or_class(MODEL, TAG, {"kind": "registry", "checkpoint": None, "seed": 0}, device="cpu")
    return replica, calls


def test_embedder_init_and_info(embedder_replica):
    replica, calls = embedder_replica
    ((spec, source, device),) = calls
    assert spec == ("open_clip", MODEL, TAG)  # the registry's default family
    assert source == ClipWeightsSource(kind="pretrained")
    assert device == "cpu"
    assert replica.info() == {
        "model_id": "ViT-B-32/laion2b_s34b_b79k",
        "weights": "random",
        "identity": RANDOM_ID,
        "device": "cpu",
        "dim": DIM,
    }
    assert replica.stats() == {"images": 0, "texts": 0, "batches": 0, "busy_s": 0.0, "admission": {"in_flight": 0, "service_s": None, "parallel": 1, "refused": 0}}


def test_embedder_reconfigure(embedder_replica):
    replica, _ = embedder_replica
    methods = (replica.embed_images, replica.embed_texts)
    # @serve.batch keeps its settings on the class-level wrapper (one per replica process): restore them
    defaults = [(m._get_max_batch_size(), m._get_batch_wait_timeout_s()) for m in methods]
    assert defaults == [(32, 0.005), (32, 0.005)]
    try:
        replica.reconfigure({"max_batch_size": 4, "batch_wait_timeout_s": 0.01})
        assert [(m._get_max_batch_size(), m._get_batch_wait_timeout_s()) for m in methods] == [(4, 0.01)] * 2
        replica.reconfigure({"max_batch_size": 8})  # a key left out keeps its value
        assert [(m._get_max_batch_size(), m._get_batch_wait_timeout_s()) for m in methods] == [(8, 0.01)] * 2
        with pytest.raises(ValueError, match="max_batch_size"):
            replica.reconfigure({"max_batch_size": 0})
        with pytest.raises(ValueError, match="unknown"):
            replica.reconfigure({"batch_size": 4})
    finally:
        for m, (size, wait) in zip(methods, defaults):
            m.set_max_batch_size(size)
            m.set_batch_wait_timeout_s(wait)


def test_embedder_batch_methods(embedder_replica, clip, photos):
    """The batch bodies (``@serve.batch`` needs a replica context, so call the undecorated functions)."""
    replica, _ = embedder_replica
    cls = type(replica)
    images = asyncio.run(cls.embed_images.__wrapped__(replica, list(photos)))
    texts = asyncio.run(cls.embed_texts.__wrapped__(replica, TEXTS))
    assert isinstance(images, list) and len(images) == len(photos)
    assert all(v.shape == (DIM,) and v.dtype == np.float32 for v in images + texts)
    np.testing.assert_array_equal(np.stack(images), clip.embed_images(photos))
    np.testing.assert_array_equal(np.stack(texts), clip.embed_texts(TEXTS))
    stats = replica.stats()
    assert (stats["images"], stats["texts"], stats["batches"]) == (len(photos), len(TEXTS), 2)
    assert stats["busy_s"] > 0


def test_embed_crops_names_the_embedder(embedder_replica, clip, photos):
    """Every ``EmbedResult`` carries the identity the retriever checks collections against."""
    from deployments.contracts import FadeResult

    replica, _ = embedder_replica
    cls = type(replica)

    async def one(crop):  # @serve.batch for a batch of one, minus the replica context
        return (await cls.embed_images.__wrapped__(replica, [crop]))[0]

    replica.embed_images = one
    crops = tuple(np.ascontiguousarray(p[:224, :224]) for p in photos[:2])
    out = asyncio.run(replica.embed_crops(FadeResult(crops, {"fade": 1.0})))
    assert (out.embedder, out.weights, out.embeddings.shape) == (RANDOM_ID, "random", (2, DIM))
    np.testing.assert_allclose(out.embeddings, clip.embed_images(crops), atol=1e-6)
