"""Every import inside mltools, and inside dfatools, points one way: no module imports another
that imports it back, directly or around a loop, counting imports inside functions too; and
mltools' subpackages (data, models, runs, ...) and top-level modules form layers, none importing
one that imports it back."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules_of(package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of ``package``, subpackages included
    (a package's ``__init__.py`` under the package's own name)."""
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:``: imports for annotations, never run."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imported_modules(name: str, path: Path, known: set[str], runtime: bool = False) -> set[str]:
    """The modules in ``known`` that module ``name`` (file ``path``) imports anywhere in its body;
    with ``runtime``, leaving out the imports under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skipped = type_checking_only(tree) if runtime else set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module itself
                target = f"{base}.{alias.name}"
                found.add(target if target in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return (found & known) - {name}


def first_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A loop of ``graph`` (node -> the nodes it points to) as a path, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


@pytest.mark.parametrize("package", ["mltools", "dfatools"])
def test_no_import_cycle(package):
    modules = modules_of(package)
    known = set(modules) - {package}
    graph = {m: imported_modules(m, modules[m], known) for m in known}
    assert graph, "no modules found"
    cycle = first_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def layer(module: str) -> str:
    """mltools' layer of ``module``: its subpackage (``mltools.runs``) or, for a top-level
    module, the module itself (``mltools.cli``)."""
    return ".".join(module.split(".")[:2])


def test_mltools_layers_point_one_way():
    modules = modules_of("mltools")
    known = set(modules) - {"mltools"}
    graph: dict[str, set[str]] = {}
    for m in known:
        targets = imported_modules(m, modules[m], known, runtime=True)
        graph.setdefault(layer(m), set()).update(layer(t) for t in targets)
    for node, targets in graph.items():
        targets.discard(node)
    cycle = first_cycle(graph)
    assert cycle is None, "layers import each other: " + " -> ".join(cycle)
    # The foundations import nothing else of ours; the commands are imported by no layer.
    for base in ("mltools.errors", "mltools.data", "mltools.studies"):
        assert graph[base] == set(), f"{base} imports {sorted(graph[base])}"
    commands = {
        "mltools.cli",
        "mltools.lr_grid",
        "mltools.publish",
        "mltools.rerun",
        "mltools.stream",
    }
    for node, targets in graph.items():
        if node.count(".") == 1 and (ROOT / "mltools" / node.split(".")[1]).is_dir():
            assert not targets & commands, f"{node} imports the command {targets & commands}"


def test_the_import_reader_sees_every_form(tmp_path):
    """The reader above, on forms written here: relative, absolute, module-from-package, inside a
    function, and type-only."""
    source = (
        "from . import b\n"
        "from .c import x\n"
        "import p.d\n"
        "from p import e\n"
        "def f():\n    from p.g import y\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from p.h import z\n"
    )
    path = tmp_path / "a.py"
    path.write_text(source)
    known = {f"p.{n}" for n in "abcdegh"}
    assert imported_modules("p.a", path, known) == known - {"p.a"}
    assert imported_modules("p.a", path, known, runtime=True) == known - {"p.a", "p.h"}


def test_the_cycle_finder_finds_a_loop_and_only_a_loop():
    assert first_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert first_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
