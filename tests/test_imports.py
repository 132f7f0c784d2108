"""Every import inside mltools, and inside dfatools, points one way: no module imports another
that imports it back, directly or around a loop, counting imports inside functions too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path, package: str = "mltools") -> set[str]:
    """The modules of ``package`` that the file at ``path`` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 or base.startswith(package):
                base = base.removeprefix(package).lstrip(".")
                if base:
                    found.add(base.split(".")[0])
                else:  # from . import a, b
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            prefix = f"{package}."
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith(prefix))
    return found - {path.stem}


@pytest.mark.parametrize("package", ["mltools", "dfatools"])
def test_no_import_cycle(package):
    folder = ROOT / package
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    graph = {m: imported_modules(folder / f"{m}.py", package) & modules for m in modules}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])
