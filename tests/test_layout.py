"""The tree stays readable (docs/layout.md): no source file over 600 lines, no function with
over 80 lines of code (its docstring aside: the API reference lives there), and the mltools top
level on one screen."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    *sorted((ROOT / "dfatools").rglob("*.py")),
    *sorted((ROOT / "mltools").rglob("*.py")),
    *sorted(ROOT.glob("*.py")),
    *sorted((ROOT / "benchmarks").glob("*.py")),
]


def code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` to the function's last line, less its docstring's."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        if isinstance(first.value.value, str):
            lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_file_over_600_lines():
    long = {
        p.relative_to(ROOT).as_posix(): n
        for p in SOURCES
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long, long


def test_no_function_over_80_lines_of_code():
    long = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (n := code_lines(node)) > 80:
                    long[f"{path.relative_to(ROOT).as_posix()}:{node.name}"] = n
    assert not long, long


def test_the_line_counter_leaves_out_the_docstring_only():
    source = 'def f(x):\n    """One.\n\n    Two."""\n    y = x\n    return y\n'
    (node,) = ast.parse(source).body
    assert code_lines(node) == 3  # def, y = x, return y
    (node,) = ast.parse("def g():\n    return 1\n").body
    assert code_lines(node) == 2


def test_mltools_top_level_fits_one_screen():
    entries = [p.name for p in (ROOT / "mltools").iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 20, sorted(entries)
