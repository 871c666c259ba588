"""The package's layers, written once (``LAYERS``), and a check of every import against them.

The imports are read with ``ast`` from every module of ``nakt_ray`` (module level and inside functions alike: a
lazy import is still a dependency). A module may import its own unit and units of *lower* layers, never a unit of
its own layer or a higher one; no import cycle may exist, inside a unit either. The pure units (fusion, metrics,
losses) import no Ray, no MLflow and nothing of nakt but each other and ``errors``; the units that must run where
Ray is not installed (the GPU machine, a deployment) import no Ray.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nakt_ray"

# Low to high. A unit is a sub-package or a top-level module; the data flow runs up the list.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "_torchvision_compat"),   # error types and wording; the platform shim Ray workers install
    ("metrics", "losses"),               # pure maths: scores, training losses
    ("fusion",),                         # pure maths: rules, agreement, entropy
    ("zoo",),                            # architectures by name
    ("config",),                         # the typed run config and the search-space language
    ("runtime", "tracking"),             # Ray start, storage URIs; MLflow runs, registry, nakt.* tags
    ("data",),                           # readers, preprocessing, augmentation, Ray Datasets of cases
    ("models",),                         # self-describing model files
    ("teachers",),                       # teacher sources (registry) and inference
    ("annotation",),                     # actor pools, the annotation pipeline, Parquet, re-fusion
    ("training", "evaluation"),          # the Ray Train loop, teachers and students; scoring
    ("search", "inference"),             # Ray Tune over students; export and prediction
    ("demo",),                           # synthetic data and `nakt demo`
    ("cli",),                            # `nakt <stage>`
]
PURE = ("fusion", "metrics", "losses")
NO_RAY = PURE + ("errors", "zoo", "config", "models", "teachers", "inference")


def unit_of(module: str) -> str:
    """``nakt_ray.annotation.pools`` -> ``annotation``; the package itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_index() -> dict[str, int]:
    return {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """(nakt modules ``path`` imports, third-party top-level packages it imports), from its AST."""
    own = module_name(path)
    is_pkg = path.name == "__init__.py"
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = own.split(".") if is_pkg else own.split(".")[:-1]
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            if t.split(".")[0] != "nakt_ray":
                theirs.add(t.split(".")[0])
                continue
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != own and not own.startswith(t + "."):  # a sub-module's own package is not an edge
                ours.add(t)
    return ours, theirs


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph, third = {}, {}
    for name, path in files.items():
        graph[name], third[name] = imports_of(path, set(files))
    return graph, third


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points to a unit of the same or a higher layer, worded for the reader."""
    index = layer_index()
    out = []
    for src, targets in sorted(graph.items()):
        su = unit_of(src)
        for dst in sorted(targets):
            du = unit_of(dst)
            if su == du or du == "" or su == "":
                continue
            if index[du] >= index[su]:
                out.append(f"{src} imports {dst}: layer {index[su]} ({su}) may import only lower layers, "
                           f"and {du} is layer {index[du]}")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


GRAPH, THIRD_PARTY = import_graph()


def test_every_unit_has_a_layer():
    units = {unit_of(m) for m in GRAPH} - {""}
    assert units <= set(layer_index()), f"units without a layer in LAYERS: {sorted(units - set(layer_index()))}"
    assert not set(layer_index()) - units, f"LAYERS names units that do not exist: {set(layer_index()) - units}"


def test_no_import_points_up_or_sideways():
    violations = layer_violations(GRAPH)
    assert not violations, "imports that break the layer order:\n" + "\n".join(violations)


def test_no_import_cycle():
    found = cycles(GRAPH)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_pure_units_import_no_pipeline_and_no_ray():
    for module, targets in GRAPH.items():
        if unit_of(module) in PURE:
            outside = {t for t in targets if unit_of(t) not in PURE + ("errors",)}
            assert not outside, f"{module} is pure maths but imports {sorted(outside)}"
            assert not THIRD_PARTY[module] & {"ray", "mlflow"}, f"{module} imports {THIRD_PARTY[module]}"


def test_units_that_run_without_ray_do_not_import_it():
    for module, third in THIRD_PARTY.items():
        if unit_of(module) in NO_RAY:
            assert "ray" not in third, f"{module} imports ray; {unit_of(module)} must run where Ray is absent"


def test_package_inits_say_what_goes_in_and_out():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 80, f"{init} needs a docstring saying what the stage takes in and gives out"


@pytest.mark.parametrize("src,dst", [
    ("nakt_ray.fusion.rules", "nakt_ray.annotation.parquet"),   # pure maths reaching into the pipeline
    ("nakt_ray.config.schema", "nakt_ray.search.tune"),          # validation importing Tune orchestration
    ("nakt_ray.runtime.storage", "nakt_ray.tracking"),           # two units of one layer
])
def test_the_check_fails_on_an_added_back_edge(src, dst):
    graph = {k: set(v) for k, v in GRAPH.items()}
    graph[src].add(dst)
    assert any(v.startswith(f"{src} imports {dst}") for v in layer_violations(graph))


def test_the_check_finds_an_added_cycle():
    graph = {"nakt_ray.a.x": {"nakt_ray.a.y"}, "nakt_ray.a.y": {"nakt_ray.a.z"}, "nakt_ray.a.z": {"nakt_ray.a.x"}}
    assert cycles(graph) == [["nakt_ray.a.x", "nakt_ray.a.y", "nakt_ray.a.z"]]
