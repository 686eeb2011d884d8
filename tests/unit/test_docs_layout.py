"""docs/layout.md against the tree: each package folder of the three layers has its row, and the row names
exactly the modules that folder holds (no module missing, none that is gone)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYOUT = REPO / "docs" / "layout.md"
LAYERS = ("models", "deployments", "serve_app")


def _package_folders() -> list[str]:
    """``models/``, ``deployments/runtime/``, ...: every folder of the three layers with Python modules."""
    folders = set()
    for layer in LAYERS:
        for path in (REPO / layer).rglob("*.py"):
            if "__pycache__" not in path.parts:
                folders.add(path.parent.relative_to(REPO).as_posix() + "/")
    return sorted(folders)


def _rows() -> dict[str, str]:
    """The layout table's rows: first cell (a folder in backticks) -> the text of the second cell."""
    rows = {}
    for line in LAYOUT.read_text().splitlines():
        m = re.match(r"^\|\s*`([^`]+/)`\s*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def _modules(folder: str) -> set[str]:
    return {p.name for p in (REPO / folder).glob("*.py") if p.name != "__init__.py"}


def test_every_package_folder_has_a_row():
    rows = _rows()
    missing = [f for f in _package_folders() if f not in rows]
    assert not missing, f"docs/layout.md has no row for {missing}"


def test_each_row_names_exactly_its_folders_modules():
    rows = _rows()
    problems = []
    for folder in _package_folders():
        named = set(re.findall(r"`([A-Za-z0-9_]+\.py)`", rows.get(folder, "")))
        present = _modules(folder)
        if present - named:
            problems.append(f"{folder}: not described: {sorted(present - named)}")
        if named - present:
            problems.append(f"{folder}: described but absent: {sorted(named - present)}")
    assert not problems, "docs/layout.md does not match the tree:\n" + "\n".join(problems)
