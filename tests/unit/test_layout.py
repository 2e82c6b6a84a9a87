"""
The package's layout is its architecture: the sans-IO core imports nothing
from Twisted, each layer imports only the layers before it, and no module
imports another in a cycle.  Read from the source (every import statement,
those inside functions and under TYPE_CHECKING too), so nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pgtls"

#: The layers, in order: each may import itself and the ones before it.
LAYERS = ("core", "tls", "relay", "server", "admin")


def module_name(path: Path) -> str:
    """The dotted name of a module file under pgtls/."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports, as written (absolute, or resolved if relative)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # "from pgtls.relay import pump" imports the module pgtls.relay.pump.
            yield from (f"{base}.{alias.name}" for alias in node.names)


def pgtls_imports() -> dict[str, set[str]]:
    """For each module, the package's modules it imports."""
    known = modules()
    return {
        name: {dep for dep in imported(name, path) if dep in known and dep != name}
        for name, path in known.items()
    }


def layer(name: str) -> str | None:
    """The layer a module belongs to; None for pgtls itself and its top-level modules."""
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def test_every_module_is_in_a_layer_but_the_top_level_few() -> None:
    """Besides the layers, pgtls holds its version, the one seam and the logger's short name."""
    top = {name for name in modules() if layer(name) is None}
    assert top == {"pgtls", "pgtls._internals", "pgtls.logs"}


@pytest.mark.parametrize("name", sorted(n for n in modules() if layer(n) == "core"))
def test_the_core_imports_nothing_from_twisted(name: str) -> None:
    """The core is sans-IO: Twisted stays out of it, even for type hints."""
    found = [dep for dep in imported(name, modules()[name]) if dep.split(".")[0] == "twisted"]
    assert found == []


def test_each_layer_imports_only_itself_and_the_layers_before_it() -> None:
    """core < tls < relay < server < admin; the seam and the version are for everyone."""
    wrong = []
    for name, deps in pgtls_imports().items():
        mine = layer(name)
        if mine is None:
            continue
        allowed = LAYERS[: LAYERS.index(mine) + 1]
        for dep in deps:
            theirs = layer(dep)
            if theirs is not None and theirs not in allowed:
                wrong.append(f"{name} imports {dep}")
    assert not wrong, "; ".join(sorted(wrong))


def test_no_import_cycle() -> None:
    """No module reaches itself through the modules it imports (package __init__s aside)."""
    graph = pgtls_imports()
    # A package's __init__ re-exporting its modules is not a cycle between them.
    edges = {
        name: {dep for dep in deps if not name.startswith(dep + ".")}
        for name, deps in graph.items()
    }
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(edges[name]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not cycles, "; ".join(cycles)


def test_the_cycle_finder_finds_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: two modules that import each other are a cycle."""
    package = tmp_path / "pgtls"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "a.py").write_text("from pgtls.core import b\n")
    (package / "core" / "b.py").write_text("def f():\n    from pgtls.core.a import x\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    with pytest.raises(AssertionError, match=r"pgtls\.core\.a -> pgtls\.core\.b -> pgtls\.core\.a"):
        test_no_import_cycle()


def test_the_layer_check_finds_an_upward_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layer check can fail: the core importing the relay is caught."""
    package = tmp_path / "pgtls"
    for sub in ("core", "relay"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "core" / "wire.py").write_text("from pgtls.relay import pump\n")
    (package / "relay" / "pump.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    with pytest.raises(AssertionError, match=r"pgtls\.core\.wire imports pgtls\.relay\.pump"):
        test_each_layer_imports_only_itself_and_the_layers_before_it()
