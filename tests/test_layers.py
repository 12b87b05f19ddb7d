"""The house's layers, enforced: the installed library never imports the pack, the pack reaches the library
only through its public package, and the pack-level tools stay out of each other's way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACK_LEVEL = ("nodes", "headless", "bench", "research", "scripts")
COMFY = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "execution", "nodes")


def imported_roots(path: Path) -> set[str]:
    """Top-level module names a file imports (absolute imports only; relative ones stay in their package)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", files("echoflow_models"), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_library_imports_neither_the_pack_nor_comfyui(path):
    assert not imported_roots(path) & set(PACK_LEVEL + COMFY)


@pytest.mark.parametrize("folder, forbidden", [
    ("nodes", {"headless", "bench", "research", "scripts"}),
    ("headless", {"bench", "research", "scripts"}),
    ("bench", {"nodes", "headless", "research", "scripts"}),
    ("research", {"nodes", "headless", "bench", "scripts"}),
])
def test_pack_level_folders_keep_to_their_job(folder, forbidden):
    offenders = {p.relative_to(ROOT).as_posix(): sorted(imported_roots(p) & forbidden) for p in files(folder)}
    assert not {k: v for k, v in offenders.items() if v}


def test_only_the_library_is_installed():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '[tool.setuptools.packages.find]\ninclude = ["echoflow_models", "echoflow_models.*"]\n' in pyproject
    library = {p.name for p in (ROOT / "echoflow_models").iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert not library & {f"{name}.py" for name in PACK_LEVEL} and not library & set(PACK_LEVEL)


def test_no_module_grows_past_600_lines_without_saying_why():
    long = []
    for path in files("echoflow_models") + files("nodes") + files("headless") + files("bench") + files("research"):
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > 600 and "Longer than 600 lines" not in doc:
            long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, long


def test_one_registry_of_networks_and_their_kinds():
    import headless
    from echoflow_models.checkpoint import MODEL_CLASSES, model_kinds
    from echoflow_models.weights import KINDS

    kinds = model_kinds()
    assert {cls.kind for cls in MODEL_CLASSES.values()} == set(KINDS)  # every kind has a network, and only those
    assert all(kinds[name] == cls.kind for name, cls in MODEL_CLASSES.items())
    headless.load_pack(ROOT)
    import sys

    bridge = sys.modules[headless.PACK_NAME + ".nodes.bridge"]
    assert bridge.CLASS_KINDS == kinds and bridge.KINDS == KINDS  # the pack derives, it does not copy
