"""The layering of docs/architecture.md: pipelines -> components -> launcher -> trainer, never an import upwards."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["trainer", "launcher", "components", "pipelines"]  # each may import only those before it


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_a_layer_above_it(layer):
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    offenders = {str(p.relative_to(REPO)): sorted(imported_packages(p) & above)
                 for p in (REPO / layer).rglob("*.py") if imported_packages(p) & above}
    assert not offenders, f"{layer} imports a layer above it: {offenders}"


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom components.images import X\n\ndef f():\n    import pipelines.local_run\n")
    assert imported_packages(module) >= {"components", "pipelines"}


def test_library_code_leaves_logging_to_the_program():
    """Only the entry points configure logging (trainer.cli.configure_logging); library modules never do."""
    allowed = {REPO / "trainer" / "cli.py", REPO / "launcher" / "objstore.py"}  # objstore: the pods' own CLI
    calls = [str(p.relative_to(REPO)) for layer in LAYERS for p in (REPO / layer).rglob("*.py")
             if p not in allowed and "logging.basicConfig" in p.read_text(encoding="utf-8")]
    assert not calls, calls
