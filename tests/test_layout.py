"""The package layout keeps the pipeline's one-way imports (docs/ARCHITECTURE.md).

Every import statement of every module is read, those inside functions too,
since a lazy import is still a dependency. A module may import only modules of
its own layer or below; across modules there is no cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lc0weights", "service")

# Lowest first; the first matching prefix decides a module's layer.
LAYERS = [
    ("format", ("lc0weights.errors", "lc0weights.settings", "lc0weights.console",
                "lc0weights.proto", "lc0weights.wire", "lc0weights.encodings", "lc0weights.net", "lc0weights.net_stream",
                "lc0weights.net_arriving", "lc0weights.synthetic", "lc0weights.gzipio", "lc0weights.files",
                "lc0weights.durable_files", "lc0weights.net_unpack")),
    ("codec", ("lc0weights.residuals", "lc0weights.weight_error", "lc0weights.kernels", "lc0weights.rans_kernels",
               "lc0weights.kernel_preload", "lc0weights.brotli_bounded", "lc0weights.tiers",
               "lc0weights.codecs")),
    ("patch", ("lc0weights.container", "lc0weights.patching", "lc0weights.patch")),
    ("repository format", ("lc0weights.repository",)),
    ("client", ("lc0weights.client",)),
    ("publisher", ("service.repository", "service.publish", "service.watch",
                   "service.encode_pool", "service.patch_policy",
                   "service.prune", "service.sweep")),
    ("serving", ("lc0weights.serving", "service.serve")),
    ("command line", ("lc0weights.cli", "lc0weights.cli_args", "lc0weights.patch_cli", "lc0weights.client_cli",
                      "service.cli")),
]
# The packages' own front doors: lc0weights re-exports nets and patches (and the version),
# service holds only its docstring.
FRONTS = {"lc0weights": "patch", "service": "publisher"}


def layer_of(module: str) -> int:
    if module in FRONTS:
        return [name for name, _ in LAYERS].index(FRONTS[module])
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``module`` imports, resolved to module names."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import module` names the module; `from pkg import function`, the package.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_no_upward_import():
    upward = []
    for module, targets in graph().items():
        for target in targets:
            # A package's __init__ re-exports its own modules: that is not a dependency upward.
            if target.startswith(module + "."):
                continue
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports "
                              f"{target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph().items()}
    # Tarjan's strongly connected components; any component of two or more is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_a_planted_upward_import(tmp_path):
    """The resolver must see relative and lazy imports, or the tests above prove nothing."""
    fake = tmp_path / "wire.py"
    fake.write_text("def f():\n    from .client.fetch import fetch\n")
    known = modules()
    assert imports_of("lc0weights.wire", fake, known) == {"lc0weights.client.fetch"}
    assert layer_of("lc0weights.client.fetch") > layer_of("lc0weights.wire")
