"""Layering: arrows point down only, ``serve_app`` -> ``deployments`` -> ``models``.

- ``models/`` is pure compute: no serving, network or file I/O, nothing heavy at import, nothing above it.
- ``deployments/`` never imports ``serve_app`` (not even inside a function).
- ``deployments/runtime/`` (what replicas need: weights, the vector store, metrics, decoding) imports no
  stage module: the stages build on the runtime, not the other way round.
- The in-process API (``serve_app/local.py``) and the offline job (``serve_app/offline/``) import nothing of
  the HTTP layer (``serve_app.ingress``): their prompts are the vocabulary below HTTP (``models/prompts.py``).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = sorted((REPO / "models").rglob("*.py"))
DEPLOYMENTS = sorted((REPO / "deployments").rglob("*.py"))
RUNTIME = sorted((REPO / "deployments" / "runtime").rglob("*.py"))
FORBIDDEN = {"ray", "fastapi", "starlette", "qdrant_client", "httpx", "urllib", "requests"}
#: The packages above ``models`` and ``deployments``.
ABOVE_MODELS = {"deployments", "serve_app", "benchmarks", "tests"}
ABOVE_DEPLOYMENTS = {"serve_app", "benchmarks", "tests"}
#: The stage modules: each holds one ``@serve.deployment`` (``offline_stages``, ``offline_label_stages``: the
#: Ray Data stages of ``samgraph batch``).
STAGE_MODULES = {
    f"deployments.{m}"
    for m in ("encoder", "decoder", "fader", "embedder", "retriever", "video", "offline_stages", "offline_label_stages")
}
#: Modules of ``serve_app`` below HTTP: the in-process API and the offline job.
BELOW_HTTP = sorted([REPO / "serve_app" / "local.py", *(REPO / "serve_app" / "offline").rglob("*.py")])
HTTP_LAYER = "serve_app.ingress"


def _imported_modules(tree: ast.AST) -> set[str]:
    """Every module an import names, anywhere in the file (function bodies too), absolute form."""
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level or not node.module:
                raise AssertionError(f"relative import at line {node.lineno}: use absolute imports")
            mods.add(node.module)
            mods.update(f"{node.module}.{alias.name}" for alias in node.names)
    return mods


def _imported_roots(tree: ast.AST) -> set[str]:
    return {m.split(".")[0] for m in _imported_modules(tree)}


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_models_package_found():
    names = {p.name for p in MODELS}
    assert {"__init__.py", "masks.py", "registry.py", "sam2_image.py"} <= names


@pytest.mark.parametrize("path", MODELS, ids=_rel)
def test_models_import_no_serving_or_network(path):
    roots = _imported_roots(ast.parse(path.read_text(), filename=str(path)))
    assert not roots & FORBIDDEN, f"{path.name} imports {sorted(roots & FORBIDDEN)}"
    assert not roots & ABOVE_MODELS, f"{path.name} imports {sorted(roots & ABOVE_MODELS)}, a layer above models/"


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=_rel)
def test_deployments_import_nothing_above(path):
    roots = _imported_roots(ast.parse(path.read_text(), filename=str(path)))
    assert not roots & ABOVE_DEPLOYMENTS, (
        f"{_rel(path)} imports {sorted(roots & ABOVE_DEPLOYMENTS)}: arrows point down only"
    )


@pytest.mark.parametrize("path", RUNTIME, ids=_rel)
def test_runtime_imports_no_stage_module(path):
    mods = _imported_modules(ast.parse(path.read_text(), filename=str(path)))
    stages = {m for m in mods if any(m == s or m.startswith(s + ".") for s in STAGE_MODULES)}
    assert not stages, f"{_rel(path)} imports the stage modules {sorted(stages)}"


def _http_imports(mods: set[str]) -> set[str]:
    return {m for m in mods if m == HTTP_LAYER or m.startswith(HTTP_LAYER + ".")}


@pytest.mark.parametrize("path", BELOW_HTTP, ids=_rel)
def test_local_api_and_offline_job_import_no_http_module(path):
    """Prompts below HTTP are ``models.prompts``; the HTTP schemas convert into them, never the reverse."""
    http = _http_imports(_imported_modules(ast.parse(path.read_text(), filename=str(path))))
    assert not http, f"{_rel(path)} imports {sorted(http)}: the in-process API and offline job stay below HTTP"


def test_every_layer_is_scanned():
    """The globs find the packages (a moved folder would make every check above vacuous)."""
    assert {"contracts.py", "errors.py", "decoder.py", "encoder.py"} <= {p.name for p in DEPLOYMENTS}
    assert {"weights.py", "vectorstore.py", "metrics.py", "images.py"} <= {p.name for p in RUNTIME}
    assert len(RUNTIME) < len(DEPLOYMENTS)
    assert {"local.py", "inputs.py", "pipeline.py", "cli.py"} <= {p.name for p in BELOW_HTTP}


@pytest.mark.parametrize("path", MODELS, ids=_rel)
def test_models_no_open_calls(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    calls = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open"
    ]
    assert not calls, f"{path.name} calls open() at lines {calls}"


def test_import_checker_catches_violations():
    """The scan itself works: it sees both import forms, submodules, imports inside functions, and open()."""
    src = "import ray.serve\nfrom urllib.request import urlopen\nimport os\nopen('f')\n"
    src += "def f():\n    from serve_app.ingress.schemas import PromptIn\n    from deployments import decoder\n"
    tree = ast.parse(src)
    assert _imported_roots(tree) & FORBIDDEN == {"ray", "urllib"}
    assert _imported_roots(tree) & ABOVE_DEPLOYMENTS == {"serve_app"}
    assert "deployments.decoder" in _imported_modules(tree)  # `from deployments import decoder` names the stage
    # an ingress import inside a function, in both forms, is seen by the below-HTTP rule
    assert _http_imports(_imported_modules(tree)) >= {"serve_app.ingress.schemas", "serve_app.ingress.schemas.PromptIn"}
    assert _http_imports(_imported_modules(ast.parse("def g():\n    from serve_app import ingress\n"))) == {
        "serve_app.ingress"
    }
    assert not _http_imports(_imported_modules(ast.parse("import serve_app.ingress_like\n")))
    assert any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "open" for n in ast.walk(tree))
    with pytest.raises(AssertionError, match="relative import"):
        _imported_modules(ast.parse("from . import x\n"))


def test_models_import_is_light():
    code = (
        "import json, sys\n"
        "import models.sam2_image, models.sam2_decoder, models.masks, models.registry\n"
        "mods = set(sys.modules)\n"
        "print(json.dumps({m: any(k == m or k.startswith(m + '.') for k in mods) "
        "for m in ('ray', 'sam2', 'fastapi', 'httpx', 'qdrant_client')}))\n"
    )
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == {"ray": False, "sam2": False, "fastapi": False, "httpx": False, "qdrant_client": False}
