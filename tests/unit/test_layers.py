"""Layering: models/ is pure compute (no serving, network or file I/O, nothing heavy at import)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = sorted((REPO / "models").glob("*.py"))
FORBIDDEN = {"ray", "fastapi", "starlette", "qdrant_client", "httpx", "urllib", "requests"}


def _imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_models_package_found():
    names = {p.name for p in MODELS}
    assert {"__init__.py", "masks.py", "registry.py", "sam2_image.py"} <= names


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_models_import_no_serving_or_network(path):
    roots = _imported_roots(ast.parse(path.read_text(), filename=str(path)))
    assert not roots & FORBIDDEN, f"{path.name} imports {sorted(roots & FORBIDDEN)}"


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_models_no_open_calls(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    calls = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open"
    ]
    assert not calls, f"{path.name} calls open() at lines {calls}"


def test_import_checker_catches_violations():
    """The scan itself works: it sees both import forms, submodules, and open()."""
    src = "import ray.serve\nfrom urllib.request import urlopen\nimport os\nfrom . import x\nopen('f')\n"
    tree = ast.parse(src)
    assert _imported_roots(tree) & FORBIDDEN == {"ray", "urllib"}
    assert any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "open" for n in ast.walk(tree))


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


MAX_LINES = 400


@pytest.mark.parametrize("path", [*MODELS, REPO / "serve_app" / "schemas.py", REPO / "serve_app" / "config.py"], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_module_size(path):
    """Modules of models/ and the request/config schemas stay small enough to read: split by concern."""
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (at most {MAX_LINES}); split it by concern"
