"""The shape rules a reader relies on (issue 22): no function over 80 lines outside the
argparse builder, no class over 250 lines, anywhere under fleet/. A long function or class
is where a second job hides; the rule is checked here so that it does not drift back."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "fleet"
MAX_FUNCTION = 80
MAX_CLASS = 250
ARGPARSE_BUILDERS = {("cli.py", "_parser")}  # one declarative list of flags, read top to bottom


def _definitions():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                assert node.end_lineno is not None
                yield path, node, node.end_lineno - node.lineno + 1


def test_no_function_over_80_lines():
    long = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)"
            for path, node, lines in _definitions()
            if not isinstance(node, ast.ClassDef) and lines > MAX_FUNCTION
            and (path.name, node.name) not in ARGPARSE_BUILDERS]
    assert long == []


def test_no_class_over_250_lines():
    long = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)"
            for path, node, lines in _definitions()
            if isinstance(node, ast.ClassDef) and lines > MAX_CLASS]
    assert long == []
