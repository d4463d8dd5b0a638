"""The package's shape: layers import each other without cycles, and the library never
imports the command line (a CLI verb is a thin layer over a library function)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgellama"


def modules() -> dict:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict) -> set:
    """The edgellama modules a file imports, at any depth (function-local imports count)."""
    def owner(name):
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("edgellama"):
            names |= {owner(f"{node.module}.{alias.name}") for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {owner(alias.name) for alias in node.names if alias.name.startswith("edgellama")}
    return names - {""}


def graph() -> dict:
    known = modules()
    # a package importing its own submodules is how packages work, not a cycle
    return {m: {t for t in imports(p, known) if t != m and not t.startswith(m + ".")} for m, p in known.items()}


def test_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(module, trail):
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_library_does_not_import_the_command_line():
    offenders = sorted(m for m, targets in graph().items()
                       if not m.startswith(("edgellama.cli", "edgellama.__main__"))
                       and any(t.startswith("edgellama.cli") for t in targets))
    assert offenders == []
