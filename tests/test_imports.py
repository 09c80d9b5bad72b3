"""Imports flow one way: each module imports only from its own layer or those below.

The order (CONTRIBUTING.md, "Layers"), lowest first. Every ``labquake_tf`` import
counts, at module level or inside a function: a function-level import does not
make an upward dependency go away, it only hides the cycle from Python.
"""

import ast
import pathlib

import pytest

PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / "labquake_tf"

LAYERS = ("labquake_tf", "errors", "files", "simulate", "data", "models", "training",
          "evaluation", "tuning", "serving", "streaming", "task", "jobs", "cli")
"""``labquake_tf`` is the package's ``__init__`` (version, target names); the rest are
its top-level modules and sub-packages."""


def package_sources(package_dir=PACKAGE_DIR):
    """``{module name: (source, is_package)}`` for every ``.py`` file of the package."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        out[name] = (path.read_text(), is_package)
    return out


def imports_of(name, source, is_package, known):
    """``[(imported module, line, inside_a_function)]``: every labquake_tf import of one module.

    ``from P import x`` counts as importing ``P.x`` when that is a module (``known``),
    else ``P``; relative imports are resolved against ``name``.
    """
    tree = ast.parse(source)
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(node)
                               if isinstance(n, (ast.Import, ast.ImportFrom)))
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            if target == "labquake_tf" or target.startswith("labquake_tf."):
                found.append((target, node.lineno, id(node) in in_function))
    return found


def layer_of(module, layers):
    """The module's layer name: ``labquake_tf.data.pipeline`` -> ``data``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def violations(sources, layers=LAYERS):
    """One line per import that goes up the order, or from/to a layer not in it."""
    known = set(sources)
    rank = {layer: i for i, layer in enumerate(layers)}
    problems = []
    for name, (source, is_package) in sorted(sources.items()):
        own = layer_of(name, layers)
        if own not in rank:
            problems.append(f"{name}: layer {own!r} is not in the declared order {layers}")
            continue
        for target, line, nested in imports_of(name, source, is_package, known):
            theirs = layer_of(target, layers)
            where = f"{name}:{line}{' (inside a function)' if nested else ''}"
            if theirs not in rank:
                problems.append(f"{where} imports {target}: layer {theirs!r} is not in the order")
            elif rank[theirs] > rank[own]:
                problems.append(f"{where} imports {target}: {own} is below {theirs}")
    return problems


def test_every_import_of_the_package_flows_down_the_declared_order():
    sources = package_sources()
    assert {layer_of(name, LAYERS) for name in sources} == set(LAYERS)
    assert violations(sources) == []


def test_evaluation_serving_and_streaming_use_no_training_code():
    # What they need of a model (the ensemble's members, the preprocessor, loading)
    # lives in models/; training is composed only by tuning, task users, jobs and cli.
    sources = package_sources()
    known = set(sources)
    for name, (source, is_package) in sources.items():
        if layer_of(name, LAYERS) in ("evaluation", "serving", "streaming"):
            targets = {t for t, _, _ in imports_of(name, source, is_package, known)}
            assert not {t for t in targets if layer_of(t, LAYERS) == "training"}, name


def test_min_max_scaling_is_written_once():
    # Every scaling goes through MinMaxScaler.transform / inverse_transform: no module
    # but data/scaling.py spells the affine map out on a scaler's min and scale.
    import re

    pattern = re.compile(r"(-\s*\w*(f|t)_min\)\s*/\s*\w*(f|t)_scale|\*\s*\w*t_scale\s*\+\s*\w*t_min)")
    found = [name for name, (source, _) in package_sources().items() if pattern.search(source)]
    assert found == []


def test_the_package_root_names_its_public_api_without_importing_it():
    import labquake_tf

    sources = package_sources()
    root, _ = sources["labquake_tf"]
    assert imports_of("labquake_tf", root, True, set(sources)) == []
    for name, module in labquake_tf.PUBLIC.items():
        assert module in sources, (name, module)
        assert f"def {name}" in sources[module][0] or f"class {name}" in sources[module][0] or \
            f"import {name}" in sources[module][0] or f", {name}" in sources[module][0], name


def test_jobs_and_cli_are_imported_by_nothing_below_them():
    sources = package_sources()
    known = set(sources)
    for name, (source, is_package) in sources.items():
        if layer_of(name, LAYERS) in ("jobs", "cli"):
            continue
        targets = {t for t, _, _ in imports_of(name, source, is_package, known)}
        assert not {t for t in targets if layer_of(t, LAYERS) in ("jobs", "cli")}, name


@pytest.mark.parametrize("module, source, expected", [
    # upward at module level, absolute
    ("labquake_tf.data.x", "from labquake_tf.training import trainer\n",
     "labquake_tf.data.x:1 imports labquake_tf.training.trainer: data is below training"),
    # upward, hidden in a function, relative
    ("labquake_tf.training.x", "def f():\n    from ..jobs import pretrain\n",
     "labquake_tf.training.x:2 (inside a function) imports labquake_tf.jobs.pretrain: "
     "training is below jobs"),
    # the package root's names are the bottom layer; importing the CLI from it is not
    ("labquake_tf", "def main():\n    import labquake_tf.cli\n",
     "labquake_tf:2 (inside a function) imports labquake_tf.cli: labquake_tf is below cli"),
    # a layer nobody declared
    ("labquake_tf.data.x", "from labquake_tf.plugins import y\n",
     "labquake_tf.data.x:1 imports labquake_tf.plugins: layer 'plugins' is not in the order"),
])
def test_the_checker_finds_upward_and_hidden_imports(module, source, expected):
    sources = {module: (source, False), "labquake_tf.jobs.pretrain": ("", False),
               "labquake_tf.training.trainer": ("", False)}
    assert violations(sources) == [expected]


def test_the_checker_passes_downward_imports_and_fails_on_a_wrong_order():
    ok = {"labquake_tf.jobs.x": ("import labquake_tf.data.pipeline\n"
                                 "from labquake_tf import TARGETS, errors\n"
                                 "def f():\n    from ..serving import export\n", False),
          "labquake_tf.errors": ("", False), "labquake_tf.serving.export": ("", False)}
    assert violations(ok) == []
    # the real package under an order with training below data: its imports say otherwise
    swapped = tuple(l for l in LAYERS if l != "training")
    swapped = swapped[:swapped.index("data")] + ("training",) + swapped[swapped.index("data"):]
    problems = violations(package_sources(), swapped)
    assert problems and all("training is below" in p for p in problems)


def cycles(sources):
    """Sets of modules that import each other, directly or around a loop (Tarjan)."""
    known = set(sources)
    graph = {name: {t for t, _, _ in imports_of(name, source, is_package, known)
                    if t in known and t != name}
             for name, (source, is_package) in sources.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while not component or v not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                found.append(component)

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def test_no_module_cycles():
    assert cycles(package_sources()) == []
    loop = {"labquake_tf.data.a": ("from labquake_tf.data import b\n", False),
            "labquake_tf.data.b": ("def f():\n    from labquake_tf.data import c\n", False),
            "labquake_tf.data.c": ("import labquake_tf.data.a\n", False)}
    assert cycles(loop) == [set(loop)]
