"""The package's layering: imports (module-level and inside functions alike) only run downwards,
cli -> runners (quick_start, compare, recommend, tuning) -> config -> registry -> trainer / model -> dataset -> prep,
and nothing imports in a circle."""
import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "recbole_llmesr"

#: Top-level module or subpackage -> layer; an import must go to a lower layer, or stay inside the same one.
LAYERS = {
    "errors": 0, "fileio": 0, "compat": 0, "launch": 0, "": 0,  # "": the package's __init__
    "prep": 1,
    "dataset": 2,
    "model": 3, "evaluation": 3,
    "trainer": 4, "checkpoints": 4,
    "registry": 5,
    "config": 6, "config_checks": 6,
    "quick_start": 7, "compare": 7, "recommend": 7, "tuning": 7,
    "cli": 8,
}


def _modules():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _import_graph():
    modules = _modules()
    graph = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return modules, graph


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    assert top in LAYERS, f"{module}: add its top-level name to LAYERS"
    return LAYERS[top]


def test_every_import_runs_down_the_layers():
    _, graph = _import_graph()
    upwards = [f"{a} -> {b}" for a, targets in graph.items() for b in targets if _layer(b) > _layer(a)]
    assert not upwards, "imports running back up:\n" + "\n".join(sorted(upwards))


def test_prep_needs_nothing_but_itself_errors_and_fileio():
    _, graph = _import_graph()
    allowed = ("recbole_llmesr.prep", "recbole_llmesr.errors", "recbole_llmesr.fileio")
    outside = [f"{a} -> {b}" for a, targets in graph.items() if a.startswith("recbole_llmesr.prep")
               for b in targets if not b.startswith(allowed)]
    assert not outside, "\n".join(sorted(outside))


def test_no_import_cycles():
    modules, graph = _import_graph()
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_modules_stay_small():
    modules, _ = _import_graph()
    large = {name: n for name, path in modules.items() if (n := len(path.read_text().splitlines())) > 420}
    assert not large, f"modules over ~400 lines: {large}"
