"""models.registry and deployments.runtime.weights: checkpoint registry, SHA-256 verified loading, weight sources."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
from pathlib import Path

import pytest
import torch

from deployments.runtime.model_weights import load_model, load_state_dict, preflight, pull_checkpoint
from deployments.runtime.weights import (
    ChecksumMismatch,
    WeightsError,
    WeightsSource,
    download,
    sha256_file,
    verify_sha256,
)
from models.registry import (
    DEFAULT_MODEL,
    MODELS,
    get_model_spec,
    list_models,
)
from models.sam2_image import build_sam2_model
from models.segmenter import ModelSpec
from tests.conftest import MODEL_ID, SEED

NAMES = ["sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large"]
ENV = ("SAMGRAPH_WEIGHTS", "SAMGRAPH_SAM2_CHECKPOINT", "SAMGRAPH_SEED")


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- registry --------------------------------------------------------------------------------


def test_list_models_in_order():
    assert list_models("sam2") == NAMES
    assert all(MODELS[n].name == n for n in NAMES)
    assert DEFAULT_MODEL == "sam2.1_hiera_tiny"


@pytest.mark.parametrize("name", NAMES)
def test_registry_entry(name):
    spec = get_model_spec(name, "sam2")
    assert spec.name == name
    assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
    assert spec.url.startswith("https://")
    assert spec.filename == f"{name}.pt"
    assert spec.url.endswith("/" + spec.filename)
    assert spec.config.startswith("configs/sam2.1/") and spec.config.endswith(".yaml")
    assert spec.size_bytes > 0 and spec.params_m > 0


def test_registry_entries_distinct():
    specs = [get_model_spec(n, "sam2") for n in NAMES]
    assert len({s.sha256 for s in specs}) == 4
    assert len({s.url for s in specs}) == 4
    assert len({s.config for s in specs}) == 4
    assert [s.params_m for s in specs] == sorted(s.params_m for s in specs)


def test_registry_configs_exist_in_sam2_package():
    import sam2

    root = Path(sam2.__file__).parent
    for name in NAMES:
        assert (root / get_model_spec(name, "sam2").config).is_file(), name


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_model_spec("nope", "sam2")
    msg = str(info.value)
    assert "'nope'" in msg
    for name in NAMES:
        assert name in msg


# --- loading checkpoint files ----------------------------------------------------------------


def test_load_state_dict_returns_state_and_sha(tiny_checkpoint):
    state, digest = load_state_dict(tiny_checkpoint)
    assert digest == _sha(tiny_checkpoint)
    assert sha256_file(tiny_checkpoint) == digest
    expected = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["model"]
    _assert_same_state(state, expected)
    assert len(state) > 100
    # with the right expected digest (any case) it verifies
    state2, digest2 = load_state_dict(tiny_checkpoint, expected_sha256=digest.upper())
    assert digest2 == digest


def test_load_sam2_from_file(tiny_checkpoint):
    loaded = load_model(MODEL_ID, WeightsSource(kind="file", checkpoint=str(tiny_checkpoint)), progress=False)
    assert loaded.model_id == MODEL_ID
    assert loaded.weights == f"sha256:{_sha(tiny_checkpoint)}"
    expected = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["model"]
    _assert_same_state(loaded.model.state_dict(), expected)
    assert not loaded.model.training


def test_load_sam2_random(clean_env):
    loaded = load_model(MODEL_ID, WeightsSource(kind="random", seed=SEED), progress=False)
    assert loaded.weights == "random"
    _assert_same_state(loaded.model.state_dict(), build_sam2_model(MODEL_ID, seed=SEED).state_dict())


def _spec_for(path, sha256: str | None) -> ModelSpec:
    return ModelSpec(
        family="sam2",
        checkpoint_key="model",
        name="test-ckpt",
        config=get_model_spec(MODEL_ID, "sam2").config,
        url=path.resolve().as_uri(),
        sha256=sha256,
        size_bytes=path.stat().st_size,
        params_m=38.9,
    )


def _tampered_copy(src, dest):
    shutil.copyfile(src, dest)
    data = bytearray(dest.read_bytes())
    data[len(data) // 2] ^= 0x01
    dest.write_bytes(bytes(data))
    return dest


def test_pull_checkpoint_verified(tiny_checkpoint, tmp_path):
    good = _sha(tiny_checkpoint)
    spec = _spec_for(tiny_checkpoint, good)
    cache = tmp_path / "cache"
    path = pull_checkpoint(spec, directory=cache, progress=False)
    assert path == cache / tiny_checkpoint.name
    assert path.is_file()
    assert _sha(path) == good
    assert verify_sha256(path, good) == good
    assert sorted(p.name for p in cache.iterdir()) == [tiny_checkpoint.name]  # no temp files left
    # a second pull uses the verified cached file
    assert pull_checkpoint(spec, directory=cache, progress=False) == path
    state, digest = load_state_dict(path, expected_sha256=good)
    assert digest == good


def test_pull_checkpoint_rejects_tampered_cached_file(tiny_checkpoint, tmp_path):
    spec = _spec_for(tiny_checkpoint, _sha(tiny_checkpoint))
    cache = tmp_path / "cache"
    cache.mkdir()
    _tampered_copy(tiny_checkpoint, cache / spec.filename)
    with pytest.raises(ChecksumMismatch):
        pull_checkpoint(spec, directory=cache, progress=False)


def test_tampered_file_fails_verification(tiny_checkpoint, tmp_path):
    good = _sha(tiny_checkpoint)
    bad = _tampered_copy(tiny_checkpoint, tmp_path / "bad.pt")
    assert _sha(bad) != good
    with pytest.raises(ChecksumMismatch):
        verify_sha256(bad, good)
    with pytest.raises(ChecksumMismatch):
        load_state_dict(bad, expected_sha256=good)
    assert issubclass(ChecksumMismatch, WeightsError)


def test_download_of_tampered_file_leaves_nothing(tiny_checkpoint, tmp_path):
    good = _sha(tiny_checkpoint)
    src = tmp_path / "src"
    src.mkdir()
    bad = _tampered_copy(tiny_checkpoint, src / "bad.pt")
    out = tmp_path / "out"
    dest = out / "sam2.1_hiera_tiny.pt"
    with pytest.raises(ChecksumMismatch):
        download(bad.as_uri(), dest, good, progress=False)
    assert not dest.exists()
    assert list(out.iterdir()) == []  # no .part temp file either
    # and via the registry path
    with pytest.raises(ChecksumMismatch):
        pull_checkpoint(_spec_for(bad, good), directory=out, progress=False)
    assert list(out.iterdir()) == []


def test_download_good_file(tiny_checkpoint, tmp_path):
    dest = tmp_path / "dl" / "x.pt"
    assert download(tiny_checkpoint.as_uri(), dest, _sha(tiny_checkpoint), progress=False) == dest
    assert dest.read_bytes() == tiny_checkpoint.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["x.pt"]


def test_download_missing_source_is_weights_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(WeightsError) as info:
        download((tmp_path / "missing.pt").as_uri(), out / "x.pt", None, progress=False)
    assert not isinstance(info.value, ChecksumMismatch)
    assert list(out.iterdir()) == []


def test_pull_missing_source_names_offline_alternatives(tmp_path):
    missing = tmp_path / "missing.pt"
    config = get_model_spec(MODEL_ID, "sam2").config
    spec = ModelSpec("t", "sam2", config, missing.as_uri(), None, None, 1.0, checkpoint_key="model")
    with pytest.raises(WeightsError) as info:
        pull_checkpoint(spec, directory=tmp_path / "cache", progress=False)
    assert "SAMGRAPH_SAM2_CHECKPOINT" in str(info.value)
    assert "SAMGRAPH_WEIGHTS=random" in str(info.value)


class _NotAllowed:
    """A class outside every torch release's ``weights_only`` allow-list: loading it must be refused."""


def test_load_state_dict_without_model_key(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weights": {}}, path)
    with pytest.raises(WeightsError, match="'model'"):
        load_state_dict(path)


def test_load_state_dict_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(WeightsError, match=re.escape(str(path))):
        load_state_dict(path)
    pickled = tmp_path / "object.pt"
    torch.save({"model": {"a": _NotAllowed()}}, pickled)  # no weights_only unpickler admits this class
    with pytest.raises(WeightsError, match=re.escape(str(pickled))):
        load_state_dict(pickled)
    with pytest.raises(WeightsError, match="does not exist"):
        load_state_dict(tmp_path / "missing.pt")


def test_strict_loading_missing_key(tiny_checkpoint):
    state, _ = load_state_dict(tiny_checkpoint)
    state = dict(state)
    dropped = sorted(state)[len(state) // 2]
    del state[dropped]
    with pytest.raises(RuntimeError, match=re.escape(dropped)):  # the refusal names the missing key
        build_sam2_model(MODEL_ID, state)


def test_strict_loading_unexpected_key(tiny_checkpoint):
    state, _ = load_state_dict(tiny_checkpoint)
    state = {**state, "extra.weight": torch.zeros(1)}
    with pytest.raises(RuntimeError, match=re.escape("extra.weight")):  # the refusal names the extra key
        build_sam2_model(MODEL_ID, state)


def test_build_needs_state_or_seed():
    with pytest.raises(ValueError):
        build_sam2_model(MODEL_ID)
    with pytest.raises(ValueError, match="valid names"):
        build_sam2_model("nope", seed=0)


def test_random_weights_deterministic():
    a = build_sam2_model(MODEL_ID, seed=SEED).state_dict()
    b = build_sam2_model(MODEL_ID, seed=SEED).state_dict()
    c = build_sam2_model(MODEL_ID, seed=SEED + 1).state_dict()
    _assert_same_state(a, b)
    assert set(a) == set(c)
    differing = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], c[k])]
    assert len(differing) > 50


def test_random_weights_do_not_touch_global_rng():
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    build_sam2_model(MODEL_ID, seed=SEED)
    assert torch.equal(torch.rand(3), expected)


# --- WeightsSource ---------------------------------------------------------------------------


def test_resolve_default_registry(clean_env):
    assert WeightsSource.resolve() == WeightsSource(kind="registry", checkpoint=None, seed=0)


def test_resolve_random_from_env(clean_env):
    clean_env.setenv("SAMGRAPH_WEIGHTS", "random")
    clean_env.setenv("SAMGRAPH_SEED", "7")
    src = WeightsSource.resolve()
    assert src.kind == "random"
    assert src.seed == 7


def test_resolve_checkpoint_env_selects_file(clean_env):
    clean_env.setenv("SAMGRAPH_SAM2_CHECKPOINT", "/some/ckpt.pt")
    src = WeightsSource.resolve()
    assert src.kind == "file"
    assert src.checkpoint == "/some/ckpt.pt"


def test_resolve_explicit_beats_env(clean_env):
    clean_env.setenv("SAMGRAPH_WEIGHTS", "random")
    clean_env.setenv("SAMGRAPH_SEED", "7")
    clean_env.setenv("SAMGRAPH_SAM2_CHECKPOINT", "/env/ckpt.pt")
    src = WeightsSource.resolve("file", "/arg/ckpt.pt", 3)
    assert (src.kind, src.checkpoint, src.seed) == ("file", "/arg/ckpt.pt", 3)
    src = WeightsSource.resolve("registry", None, 0)
    assert (src.kind, src.seed) == ("registry", 0)


@pytest.mark.parametrize("seed", ["abc", "1.5", " ", "0x10"])
def test_resolve_bad_seed(clean_env, seed):
    clean_env.setenv("SAMGRAPH_WEIGHTS", "random")
    clean_env.setenv("SAMGRAPH_SEED", seed)
    with pytest.raises(ValueError, match="SAMGRAPH_SEED"):
        WeightsSource.resolve()


def test_resolve_unknown_kind(clean_env):
    with pytest.raises(ValueError):
        WeightsSource.resolve("cloud")
    clean_env.setenv("SAMGRAPH_WEIGHTS", "nope")
    with pytest.raises(ValueError):
        WeightsSource.resolve()


def test_file_without_path_rejected(clean_env):
    with pytest.raises(ValueError, match="checkpoint"):
        WeightsSource(kind="file")
    with pytest.raises(ValueError, match="checkpoint"):
        WeightsSource.resolve("file")


def test_preflight_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        preflight(MODEL_ID, WeightsSource(kind="file", checkpoint=str(tmp_path / "missing.pt")))


def test_preflight_existing_file_and_random(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMGRAPH_CACHE_DIR", str(tmp_path / "cache"))
    preflight(MODEL_ID, WeightsSource(kind="file", checkpoint=str(tiny_checkpoint)))
    preflight(MODEL_ID, WeightsSource(kind="random", seed=1))
    assert not (tmp_path / "cache").exists()  # nothing downloaded or created


def test_preflight_unknown_model():
    with pytest.raises(ValueError, match="valid names"):
        preflight("nope", WeightsSource(kind="random"))


def test_preflight_store_refuses_an_unwritable_data_dir(tmp_path, monkeypatch):
    from deployments.runtime.store_checks import StoreError, preflight_store

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.delenv("SAMGRAPH_QDRANT_URL", raising=False)
    monkeypatch.setenv("SAMGRAPH_DATA_DIR", str(blocker / "sub"))
    with pytest.raises(StoreError, match="not writable"):
        preflight_store()
    monkeypatch.setenv("SAMGRAPH_DATA_DIR", str(tmp_path / "data"))
    assert preflight_store() == {"path": str(tmp_path / "data" / "qdrant")}
    monkeypatch.setenv("SAMGRAPH_QDRANT_URL", "http://127.0.0.1:6333")
    assert preflight_store()["url"] == "http://127.0.0.1:6333"


def test_build_app_fails_fast_on_an_unwritable_data_dir(tmp_path, tiny_checkpoint):
    from deployments.runtime.store_checks import StoreError
    from serve_app.app import build_app

    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = {"weights": "file", "checkpoint": str(tiny_checkpoint), "clip": {"weights": "random"}, "retriever": {"path": str(blocker / "q")}}
    with pytest.raises(StoreError, match=str(blocker)):
        build_app(args)


# --- `samgraph models list | pull` against a file:// registry ---------------------------------


@pytest.fixture
def file_registry(tmp_path, monkeypatch):
    """The registry's tiny entry pointed at a local file (its real SHA-256), and an empty cache dir via
    SAMGRAPH_CACHE_DIR; (the file, its digest, the cache dir)."""
    import models.registry

    source = tmp_path / "mirror" / "sam2.1_hiera_tiny.pt"
    source.parent.mkdir()
    source.write_bytes(b"not a real checkpoint, but these exact bytes" * 100)
    digest = _sha(source)
    real = get_model_spec(MODEL_ID, "sam2")
    entry = dataclasses.replace(real, url=source.as_uri(), sha256=digest, size_bytes=source.stat().st_size)
    monkeypatch.setitem(models.registry.MODELS, MODEL_ID, entry)
    cache = tmp_path / "cache"
    monkeypatch.setenv("SAMGRAPH_CACHE_DIR", str(cache))
    return source, digest, cache


def _listed(out: str) -> dict[str, list[str]]:
    """`models list` rows by name: [family, params, size, unit, cached, sha256]."""
    return {row.split()[0]: row.split()[1:] for row in out.splitlines()[2:]}


def test_cli_models_list_shows_the_registry_and_what_is_cached(file_registry, capsys):
    from serve_app.cli.main import main

    source, digest, cache = file_registry
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"cache dir: {cache}"
    rows = _listed(out)
    assert list(rows) == list(MODELS)  # every family's models, SAM 2.1 first
    assert list(rows)[: len(NAMES)] == NAMES and rows["mobile_sam"][0] == "mobile_sam"
    assert rows[MODEL_ID][-2:] == ["no", digest]
    assert rows["sam2.1_hiera_large"][-1] == MODELS["sam2.1_hiera_large"].sha256
    cache.mkdir()
    (cache / source.name).write_bytes(source.read_bytes())
    assert main(["models", "list"]) == 0
    rows = _listed(capsys.readouterr().out)
    assert rows[MODEL_ID][-2] == "yes" and all(rows[n][-2] == "no" for n in list(MODELS)[1:])


def test_cli_models_pull_downloads_verifies_and_lists_it_cached(file_registry, capsys):
    from serve_app.cli.main import main

    source, digest, cache = file_registry
    assert main(["models", "pull"]) == 0  # the default model
    out = capsys.readouterr().out
    assert out.strip() == f"{MODEL_ID}: {cache / source.name} (sha256 verified)"
    assert [p.name for p in cache.iterdir()] == [source.name]
    assert (cache / source.name).read_bytes() == source.read_bytes()
    assert main(["models", "list"]) == 0
    assert _listed(capsys.readouterr().out)[MODEL_ID][-2] == "yes"
    assert main(["models", "pull", MODEL_ID]) == 0  # already there: verified, not fetched again
    assert capsys.readouterr().out.strip().endswith("(sha256 verified)")


def test_cli_models_pull_refuses_a_wrong_sha256(file_registry, capsys, monkeypatch):
    import dataclasses

    import models.registry
    from serve_app.cli.main import main

    source, digest, cache = file_registry
    wrong = "0" * 64
    entry = dataclasses.replace(get_model_spec(MODEL_ID, "sam2"), sha256=wrong)
    monkeypatch.setitem(models.registry.MODELS, MODEL_ID, entry)
    assert main(["models", "pull", MODEL_ID]) == 1
    captured = capsys.readouterr()
    last = captured.err.splitlines()[-1]  # after the download's progress bar
    assert last.startswith("error: SHA-256") and digest in last and wrong in last
    assert "verified" not in captured.out
    assert list(cache.iterdir()) == []  # nothing saved, no temp file left
    # a cached file that does not match is refused too, without a download
    (cache / source.name).write_bytes(source.read_bytes())
    assert main(["models", "pull", MODEL_ID]) == 1
    assert capsys.readouterr().err.startswith(f"error: SHA-256 of {cache / source.name} is {digest}")


def test_cli_models_pull_unknown_name_lists_the_valid_ones(file_registry, capsys):
    from serve_app.cli.main import main

    assert main(["models", "pull", "sam2.1_hiera_huge"]) == 1
    err = capsys.readouterr().err
    assert all(name in err for name in NAMES)
    assert not file_registry[2].exists()


def test_a_gated_download_needs_hf_token_and_says_so(tmp_path, monkeypatch):
    """SAM 3's weights are gated on the hub: without HF_TOKEN the pull fails at once naming it; with a
    token but no way to reach the hub (offline mode here) it fails with the reason and the ways out."""
    spec = get_model_spec("sam3")
    assert spec.gated and spec.file_format == "safetensors"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(WeightsError, match="HF_TOKEN"):
        pull_checkpoint(spec, tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import, not from the env
    with pytest.raises(WeightsError, match="could not download .*facebook/sam3") as info:
        pull_checkpoint(spec, tmp_path)
    assert "checkpoint" in str(info.value) and "SAMGRAPH_WEIGHTS=random" in str(info.value)
    assert not any(tmp_path.iterdir())  # nothing half-written stays in the cache dir


def test_an_entry_without_released_weights_is_refused_for_download(tmp_path):
    with pytest.raises(WeightsError, match="sam3-tiny has no released weights"):
        pull_checkpoint(get_model_spec("sam3-tiny"), tmp_path)


def test_a_local_copy_of_a_hub_repository_loads_offline(tmp_path):
    """SAM 3's checkpoint may be a directory (a local copy of facebook/sam3): its model.safetensors is
    loaded, strictly, with its SHA-256 as the weights id; a directory without it fails pre-flight."""
    from deployments.runtime.weights import WeightsSource
    from tests.family_weights import write_sam3_tiny_checkpoint

    spec = get_model_spec("sam3")
    written = write_sam3_tiny_checkpoint(tmp_path, seed=0)
    written.rename(tmp_path / "model.safetensors")
    state, digest = load_state_dict(tmp_path, spec=spec)
    assert digest == hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    assert any(k.startswith("tracker_neck.") for k in state) and any(k.startswith("detector_model.") for k in state)
    preflight("sam3", WeightsSource(kind="file", checkpoint=str(tmp_path)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="does not exist .a directory must hold model.safetensors"):
        preflight("sam3", WeightsSource(kind="file", checkpoint=str(empty)))


class _Hub:
    """A stand-in for the Hugging Face hub's HTTP API on loopback (the hub itself is out of reach here):
    it publishes one Git LFS file's digest (``paths-info``) and serves its bytes (``resolve``), which may
    differ from the published digest, as a corrupted or swapped file would."""

    def __init__(self, repo: str, filename: str, content: bytes, published_sha256: str) -> None:
        import http.server
        import json
        import threading

        commit = "0" * 40
        paths_info = [{"type": "file", "path": filename, "oid": "1" * 40, "size": len(content),
                       "lfs": {"oid": published_sha256, "size": len(content), "pointerSize": 134}}]

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _file_headers(self):
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{published_sha256}"')
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()

            def do_POST(self):  # noqa: N802  (http.server's method names)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.startswith(f"/api/models/{repo}/paths-info/"):
                    body = json.dumps(paths_info).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def do_HEAD(self):  # noqa: N802
                self._file_headers() if f"/{repo}/resolve/" in self.path else self.send_error(404)

            def do_GET(self):  # noqa: N802
                if f"/{repo}/resolve/" in self.path:
                    self._file_headers()
                    self.wfile.write(content)
                else:
                    self.send_error(404)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("tampered", [False, True])
def test_a_gated_download_is_checked_against_the_digest_the_hub_publishes(tmp_path, monkeypatch, tampered):
    """SAM 3's registry entry has no SHA-256 (none is published outside the hub): the download is checked
    against the hub's own digest of the file (its Git LFS object id), which is then kept beside the cached
    file and checked again on the next load; a file whose bytes do not match is refused and not kept."""
    import huggingface_hub.constants

    spec = get_model_spec("sam3")
    assert spec.sha256 is None
    content = b"not really safetensors, but bytes with a digest" * 1000
    published = hashlib.sha256(content).hexdigest()
    hub = _Hub("facebook/sam3", spec.url.rsplit("/", 1)[-1], content + (b"!" if tampered else b""), published)
    try:
        monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        if tampered:
            with pytest.raises(ChecksumMismatch, match=f"expected {published}"):
                pull_checkpoint(spec, tmp_path, progress=False)
            assert not (tmp_path / spec.filename).exists()
            return
        path = pull_checkpoint(spec, tmp_path, progress=False)
    finally:
        hub.close()
    assert path.read_bytes() == content
    assert (tmp_path / f"{spec.filename}.sha256").read_text().split()[0] == published
    assert pull_checkpoint(spec, tmp_path) == path  # cached: checked against the recorded digest, no hub
    path.write_bytes(content[:-1])
    with pytest.raises(ChecksumMismatch, match=f"expected {published}"):
        pull_checkpoint(spec, tmp_path)
