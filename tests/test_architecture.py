"""The house rules of docs/architecture.md, checked on the source: no import cycles, a portable modeling/.

`make lint` runs the layer contracts (import-linter); these tests also see function-level imports and the
Hub-portability of modeling/, and run with the default suite.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
# Installed name -> source folder (setup.cfg `package_dir`).
PACKAGE_DIRS = {
    "aaclip_hf": ROOT / "aaclip_hf",
    "aaclip_hf.modeling": ROOT / "modeling",
    "aaclip_hf.conversion": ROOT / "conversion",
    "aaclip_hf.training": ROOT / "training",
}
MODELING_MAY_IMPORT = {"torch", "transformers", "numpy", "PIL", "huggingface_hub", "safetensors"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if any(name.startswith(p + ".") for p in PACKAGE_DIRS if p != package and p.startswith(package + ".")):
                continue
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """Every module this file imports (function-level imports too), as installed names."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            out += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return out


def _graph() -> dict[str, set[str]]:
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, _line in _imports(name, path):
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a package's own __init__
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_source_tree_is_found():
    assert {"aaclip_hf.modeling.modeling_aaclip", "aaclip_hf.training.trainer", "aaclip_hf.cli"} <= set(MODULES)


def test_no_import_cycles_between_files_lazy_imports_included():
    assert _cycles(_graph()) == []


def _room(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else name


def test_no_import_cycles_between_rooms():
    rooms: dict[str, set[str]] = {}
    for source, targets in _graph().items():
        rooms.setdefault(_room(source), set()).update(_room(t) for t in targets if _room(t) != _room(source))
    for targets in list(rooms.values()):
        for t in targets:
            rooms.setdefault(t, set())
    # The package root only registers and re-exports; `-m aaclip_hf.training` and `-m aaclip_hf.benchmark` are
    # entry points above the CLI.
    for root in ("aaclip_hf", "aaclip_hf._lazy", "aaclip_hf.version"):  # the root, its lazy loader, the version
        rooms.pop(root, None)
        for targets in rooms.values():
            targets.discard(root)
    rooms["aaclip_hf.training"].discard("aaclip_hf.cli")
    rooms["aaclip_hf.benchmark"].discard("aaclip_hf.cli")

    assert _cycles(rooms) == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("aaclip_hf.modeling")))
def test_modeling_imports_only_its_siblings_and_the_portable_stack(name):
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for target, line in _imports(name, MODULES[name]):
        top = target.split(".")[0]
        if target.startswith("aaclip_hf."):
            if not target.startswith("aaclip_hf.modeling"):
                bad.append(f"{MODULES[name].name}:{line} imports {target}")
        elif top not in stdlib and top not in MODELING_MAY_IMPORT:
            bad.append(f"{MODULES[name].name}:{line} imports {target}")
    assert bad == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("aaclip_hf.cli")))
def test_cli_modules_import_the_library_inside_their_functions(name):
    """`aaclip --help` builds every subcommand's parser: at module level a CLI module imports only the standard
    library and its light siblings (the library, torch and transformers come inside the functions that use them)."""
    stdlib = set(sys.stdlib_module_names)
    light = {"aaclip_hf.version", "aaclip_hf.cli.parsing", "aaclip_hf.cli.errors"} | {
        n for n in MODULES if n.startswith("aaclip_hf.cli.")
    }
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
    heavy = []
    for node in tree.body:  # module level only
        if isinstance(node, ast.Import):
            heavy += [alias.name for alias in node.names if alias.name.split(".")[0] not in stdlib]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            targets = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
            heavy += [t for t in targets if t.split(".")[0] not in stdlib and t not in light]
    assert heavy == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
