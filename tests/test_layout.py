"""The module layout: imports run one way (omniwise.py -> webserver.py, blueprints/ -> core/; worker.py -> core/)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules(root: Path) -> dict[str, Path]:
    """Every module of core/ and blueprints/ and the programs beside them under `root`, by dotted name."""
    found = {}
    for package in ("core", "blueprints"):
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for script in ("omniwise.py", "webserver.py", "worker.py", "backtest_cli.py"):
        if (root / script).exists():
            found[script[:-3]] = root / script
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The known modules that `name` imports, anywhere in its file (inside functions too), relative ones resolved."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            # `from package import module` loads that module; anything else comes from `package` itself
            targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {target for target in targets if target in known and target != name}


def import_loops(root: Path) -> list[list[str]]:
    """Each import loop among the modules under `root`, as the chain of modules that closes it."""
    found = modules(root)
    graph = {name: imports_of(name, path, set(found)) for name, path in found.items()}
    state: dict[str, str] = {}
    loops = []

    def visit(name: str, chain: list[str]) -> None:
        state[name] = "open"
        chain.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                loops.append(chain[chain.index(target):] + [target])
            elif target not in state:
                visit(target, chain)
        chain.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    return loops


def test_no_import_loop_among_core_blueprints_and_the_two_programs():
    assert import_loops(ROOT) == []


def test_a_loop_through_a_relative_import_inside_a_function_is_found(tmp_path):
    (tmp_path / "core" / "health").mkdir(parents=True)
    (tmp_path / "core" / "__init__.py").write_text("")
    (tmp_path / "core" / "health" / "__init__.py").write_text("")
    (tmp_path / "core" / "health" / "alerts.py").write_text("from core import store\n")
    (tmp_path / "core" / "store.py").write_text("def migrate():\n    from .health import alerts\n")
    (tmp_path / "worker.py").write_text("from core import store\n")
    assert import_loops(tmp_path) == [["core.health.alerts", "core.store", "core.health.alerts"]]


def test_core_never_imports_the_web_layer_or_the_programs():
    found = modules(ROOT)
    higher = {name for name in found if not name.startswith("core")}
    for name, path in found.items():
        if name.startswith("core"):
            assert not imports_of(name, path, set(found)) & higher, name


def test_blueprints_and_the_web_server_never_import_the_programs():
    found = modules(ROOT)
    for name, path in found.items():
        if name.startswith("blueprints") or name == "webserver":
            assert not imports_of(name, path, set(found)) & {"omniwise", "worker"}, name


def test_only_the_store_imports_sqlite_utils():
    # core/store.py imports it without pandas (core/lean_imports.py); a direct import elsewhere, run first, would
    # bring pandas into every process again.
    found = modules(ROOT)
    direct = set()
    for name, path in found.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "sqlite_utils" or n.startswith("sqlite_utils.") for n in names):
                direct.add(name)
    assert direct == set()  # core/store.py reaches it through without_dataframes, not an import statement


def test_the_programs_start_without_pandas():
    # pandas is installed for the tests' reference; importing it costs 0.3-1 s of every process start
    import subprocess
    import sys

    programs = sorted(name for name in modules(ROOT) if "." not in name or name.startswith("blueprints."))
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {programs!r}]; "
            "print(' '.join(m for m in ('sqlite_utils', 'talib', 'pandas', 'polars') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.split() == ["sqlite_utils", "talib"]
