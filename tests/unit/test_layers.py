"""The layers point one way along the data flow: transform <- loader <- cdc (see
../shared/CONVENTIONS.md, "Layers"): transform/ imports only itself, loader/ only transform/.
Inside cdc/, the capture side (cdc/capture/) imports neither the operator's commands (cdc/ops/)
nor the dev tools (cdc/dev/), and only the command line reaches the dev tools: the daemon never
runs them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"transform": ("loader", "cdc"), "loader": ("cdc",)}


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, at the top or inside a function."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(package: str) -> None:
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for path in sorted((ROOT / package).rglob("*.py"))
             for line, module in imports(path)
             if module.split(".")[0] in FORBIDDEN[package]]
    assert wrong == [], "\n".join(wrong)


def test_the_capture_side_and_the_daemon_keep_to_their_own() -> None:
    cdc = ROOT / "cdc"
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for path in sorted(cdc.rglob("*.py"))
             for line, module in imports(path)
             if (module.startswith(("cdc.dev", "cdc.ops")) and path.parent.name == "capture")
             or (module.startswith("cdc.dev") and path.parent.name != "dev" and path.name != "cli.py")]
    assert wrong == [], "\n".join(wrong)
    assert {p.name for p in (cdc / "dev").glob("*.py")} >= {"localservers.py", "seed.py", "demo.py"}


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from cdc.settings import Settings\n    import cdc.errors\n")
    assert imports(module) == [(2, "cdc.settings"), (3, "cdc.errors")]


def test_no_module_over_500_lines_and_no_function_over_60() -> None:
    """A module over ~500 lines or a function over ~60 is a sign to split (CONVENTIONS.md)."""
    big: list[str] = []
    for package in ("cdc", "loader", "transform"):
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            where = path.relative_to(ROOT)
            if len(text.splitlines()) > 500:
                big.append(f"{where}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text, str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > 60:
                        big.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    assert big == [], "\n".join(big)
