"""The tree is the map: imports point down the layers of `common/`, never up and never in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

from common import LAYERS

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "workers", "review", "vitrine")
# Above `common/`: what each top-level package may import besides itself.
ALLOWED_ABOVE: dict[str, set[str]] = {
    "common": set(),
    "workers": {"common"},
    "review": {"common"},
    "vitrine": {"common", "workers", "review"},
}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path, name: str) -> set[str]:
    """Every module of ours `path` imports, at module level or inside a function."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    known = modules()
    return {module for module in found if module in known and module != name}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "common" or len(parts) == 1:
        return None
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    raise AssertionError(f"{module} is in no layer of common.LAYERS")


def graph() -> dict[str, set[str]]:
    return {name: imports(path, name) for name, path in modules().items()}


def test_common_imports_only_down_its_layers() -> None:
    upward = []
    for module, targets in graph().items():
        mine = layer_of(module)
        for target in targets:
            theirs = layer_of(target)
            if mine is None or theirs is None:
                continue
            same_package = module.split(".")[:2] == target.split(".")[:2]
            if theirs > mine or (theirs == mine and not same_package):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that point up (or sideways) the layers:\n" + "\n".join(sorted(upward))


def test_top_level_packages_import_only_what_they_stand_on() -> None:
    wrong = [
        f"{module} -> {target}"
        for module, targets in graph().items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0]
        and target.split(".")[0] not in ALLOWED_ABOVE[module.split(".")[0]]
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circle() -> None:
    edges = graph()
    # Package __init__ modules stand for their package only; their children are the nodes.
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                circles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_every_library_module_is_under_400_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    long = {name: n for name, n in sizes.items() if n >= MAX_LINES}
    assert not long, f"split these by role: {long}"


def test_only_the_base_sits_at_the_top_of_common() -> None:
    base = {"__init__", "settings", "schema", "db", "object_store", "runtime"}
    top = {path.stem for path in (ROOT / "common").glob("*.py")}
    assert top == base, f"move into a concern subpackage: {sorted(top - base)}"
