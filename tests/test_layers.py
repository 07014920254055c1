"""The layers of docs/DESIGN.md hold: each package imports only what its row allows.

The allowed imports are read from the table in docs/DESIGN.md itself, so the design
notes and the code cannot drift apart silently.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ddpm_tools"
ALWAYS = {"errors", "progress"}  # every layer may use the error family and progress type
TOP_LEVEL = {"errors", "progress", "device", "__init__", "__main__"}


def allowed_imports(design: str) -> dict[str, set[str] | None]:
    """{package: the packages it may import, or None for 'everything'} from the table of
    section 4 of docs/DESIGN.md (rows ``| `pkg/` | what | `a`, `b` |``)."""
    rules: dict[str, set[str] | None] = {}
    for line in design.splitlines():
        m = re.match(r"\|\s*`(\w+)/`\s*\|[^|]*\|([^|]*)\|\s*$", line)
        if not m:
            continue
        cell = m.group(2)
        if "everything" in cell:
            rules[m.group(1)] = None
        else:
            rules[m.group(1)] = set(re.findall(r"`(\w+)`", cell))
    return rules


def package_imports(root: Path) -> dict[str, set[str]]:
    """{package: the ddpm_tools packages or top-level modules its modules import}, from
    every import statement (module level and inside functions)."""
    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if len(rel) == 1:
            continue  # top-level modules are checked by name below
        src = rel[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "ddpm_tools" and len(parts) > 1 and parts[1] != src:
                    found.setdefault(src, set()).add(parts[1])
    return found


def violations(rules: dict[str, set[str] | None], found: dict[str, set[str]]) -> list[str]:
    """Every import that no row allows, as 'pkg -> other'."""
    bad = []
    for src, dsts in sorted(found.items()):
        if src not in rules:
            bad.append(f"{src} (no row in docs/DESIGN.md)")
            continue
        allowed = rules[src]
        if allowed is None:
            continue
        bad += [f"{src} -> {d}" for d in sorted(dsts - allowed - ALWAYS)]
    return bad


def test_every_package_imports_only_what_the_design_allows():
    rules = allowed_imports((ROOT / "docs" / "DESIGN.md").read_text())
    assert {"core", "costs", "schedules", "likelihood", "cli"} <= set(rules)
    found = package_imports(PACKAGE)
    assert not violations(rules, found), violations(rules, found)


def test_core_imports_nothing_else_of_the_package():
    found = package_imports(PACKAGE).get("core", set())
    assert found <= ALWAYS, found


def test_the_checker_finds_a_forbidden_import(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "m.py").write_text("def f():\n    from ddpm_tools.io.files import x\n")
    rules = {"core": set(), "io": set()}
    assert violations(rules, package_imports(tmp_path)) == ["core -> io"]


@pytest.mark.parametrize("row, expected", [
    ("| `sets/` | the manifest | `core`, `io`, `models` |", {"core", "io", "models"}),
    ("| `demo/` | the demo | everything but `cli` |", None),
    ("| `io/` | files | — |", set()),
])
def test_rows_of_the_design_table_parse(row, expected):
    assert list(allowed_imports(row).values()) == [expected]


def test_only_a_few_modules_stay_loose_at_the_top():
    loose = {p.stem for p in PACKAGE.glob("*.py")}
    assert loose <= TOP_LEVEL, loose - TOP_LEVEL


def test_the_public_names_resolve_and_import_ddpm_tools_stays_light():
    import subprocess
    import sys

    code = ("import sys, ddpm_tools; light = 'torch' not in sys.modules; "
            "[getattr(ddpm_tools, n) for n in ddpm_tools.__all__]; print(light)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "True"
    import ddpm_tools

    with pytest.raises(AttributeError):
        ddpm_tools.not_a_name  # noqa: B018
