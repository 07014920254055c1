"""The layout rules of the package, read from the source with ``ast`` (nothing imported):
no import circle, no module over 400 lines, few loose top-level modules, a math core
without I/O or CLI imports, and thin CLI commands. Each check is also run on a small
synthetic package that breaks it, so that a check that cannot fail is caught too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ddpm_tools"
MAX_MODULE_LINES = 400
MAX_LOOSE_MODULES = 5  # top-level modules besides __init__ and __main__
MAX_COMMAND_BODY_LINES = 25  # statements of a typer command after its docstring
CORE_FORBIDDEN = ("ddpm_tools.io", "ddpm_tools.cli", "rich", "typer", "safetensors")


def module_name(root: Path, path: Path) -> str:
    """``ddpm_tools.costs.build`` for ``root/costs/build.py`` (packages: their __init__)."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root``: dotted name -> file."""
    return {module_name(root, p): p for p in sorted(root.rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, (ast.Name, ast.Attribute)) and ast.unparse(test).endswith(
        "TYPE_CHECKING")


def imported_names(tree: ast.Module, name: str, is_package: bool) -> list[str]:
    """Every name imported anywhere in a module (module level and inside functions),
    relative imports resolved; ``from a import b`` gives both ``a`` and ``a.b``. Imports
    under ``if TYPE_CHECKING:`` are left out (they never run)."""
    out: list[str] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            continue
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*parent, *([base] if base else [])])
            out += [base, *(f"{base}.{a.name}" for a in node.names)]
        stack.extend(ast.iter_child_nodes(node))
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a name that is not a module counts as
    its package). The root package itself is left out: it imports lazily."""
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        if name == root.name:
            continue
        tree = ast.parse(path.read_text(), str(path))
        targets = {n for n in imported_names(tree, name, path.name == "__init__.py")
                   if n in mods and n != root.name and n != name}
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, sorted order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def long_modules(root: Path, limit: int = MAX_MODULE_LINES) -> dict[str, int]:
    """Modules longer than ``limit`` lines -> their length."""
    lengths = {n: len(p.read_text().splitlines()) for n, p in modules(root).items()}
    return {n: k for n, k in lengths.items() if k > limit}


def loose_modules(root: Path) -> list[str]:
    """Top-level modules of the package besides __init__ and __main__."""
    return sorted(p.stem for p in root.glob("*.py") if p.stem not in ("__init__", "__main__"))


def core_violations(root: Path, forbidden: tuple[str, ...] = CORE_FORBIDDEN) -> list[str]:
    """'module imports name' for every forbidden import in the package's core/."""
    out = []
    for name, path in modules(root).items():
        if not name.startswith(f"{root.name}.core"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for imp in imported_names(tree, name, path.name == "__init__.py"):
            out += [f"{name} imports {f}" for f in forbidden
                    if imp == f or imp.startswith(f + ".")]
    return sorted(set(out))


def _is_command(decorator: ast.expr) -> bool:
    """``@app.command(...)``, ``@app.command``, ``@x.callback(...)``: a typer command."""
    func = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(func, ast.Attribute) and func.attr in ("command", "callback")


def command_lengths(root: Path) -> dict[str, int]:
    """'module.function' -> lines of its body after the docstring, for every function
    registered as a typer command in the package's cli/."""
    out = {}
    for name, path in modules(root).items():
        if not name.startswith(f"{root.name}.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if not any(_is_command(d) for d in node.decorator_list):
                continue
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            lines = 0 if not body else (node.end_lineno or 0) - body[0].lineno + 1
            out[f"{name}.{node.name}"] = lines
    return out


# --- the rules, on ddpm_tools ------------------------------------------------------------


def test_no_import_circle():
    graph = import_graph(PACKAGE)
    assert len(graph) > 50  # the walk found the package
    assert "ddpm_tools.costs.build" in graph["ddpm_tools.schedules.spec"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_module_over_400_lines():
    assert long_modules(PACKAGE) == {}


def test_few_loose_top_level_modules():
    loose = loose_modules(PACKAGE)
    assert "errors" in loose
    assert len(loose) <= MAX_LOOSE_MODULES, loose


def test_core_imports_no_io_cli_or_rich():
    assert core_violations(PACKAGE) == []


def test_cli_commands_are_thin():
    lengths = command_lengths(PACKAGE)
    assert "ddpm_tools.cli.cmd_optimize.optimize_schedule_cmd" in lengths  # found them
    assert len(lengths) >= 12
    too_long = {k: v for k, v in lengths.items() if v > MAX_COMMAND_BODY_LINES}
    assert too_long == {}


# --- each check fails on a package that breaks its rule ------------------------------------


def test_find_cycle_reports_the_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"x"}}) == ["x", "x"]
    assert find_cycle({"a": {"b", "d"}, "b": set(), "d": {"e"}, "e": {"d"}}) == ["d", "e", "d"]


@pytest.fixture()
def bad_package(tmp_path: Path) -> Path:
    """A tiny package breaking every rule once."""
    root = tmp_path / "ddpm_tools"
    for sub in ("core", "cli", "sets"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
    (root / "__init__.py").write_text("from ddpm_tools.sets import a\n")
    (root / "sets" / "a.py").write_text("from ddpm_tools.sets.b import f\n")
    (root / "sets" / "b.py").write_text("def f():\n    from . import a\n")  # circle in a function
    (root / "core" / "math.py").write_text(
        "import numpy\n\n\ndef show():\n    from rich.console import Console\n")
    (root / "core" / "ok.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import typer\n")
    (root / "cli" / "cmd.py").write_text(
        "@app.command('long')\ndef long_cmd():\n    '''Doc.'''\n" + "    x = 1\n" * 26
        + "\n\n@app.command\ndef short_cmd():\n    '''Doc\n    more.'''\n" + "    x = 1\n" * 25)
    for k in range(6):
        (root / f"loose{k}.py").write_text("x = 1\n" * (401 if k == 0 else 1))
    return root


def test_checks_fail_on_a_package_that_breaks_them(bad_package: Path):
    cycle = find_cycle(import_graph(bad_package))
    assert cycle == ["ddpm_tools.sets.a", "ddpm_tools.sets.b", "ddpm_tools.sets.a"]
    assert long_modules(bad_package) == {"ddpm_tools.loose0": 401}
    assert len(loose_modules(bad_package)) == 6 > MAX_LOOSE_MODULES
    assert core_violations(bad_package) == ["ddpm_tools.core.math imports rich"]
    assert command_lengths(bad_package) == {"ddpm_tools.cli.cmd.long_cmd": 26,
                                            "ddpm_tools.cli.cmd.short_cmd": 25}
