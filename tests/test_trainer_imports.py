"""The trainers' imports, read with `ast`: one direction, no private names across modules.

The layout (trainers/DESIGN.md): entry points -> loop -> jax_loop / tf_child -> controller ->
run_dir -> flags, with the small helpers below them. This test reads every module of
`trainers/` without importing it and fails on an import circle between them, on a name
starting with "_" taken from another project module, and on an import inside a function
without a comment giving its reason.
"""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = ("trainers", "keras_gmlp")


def _modules():
    found = {}
    for directory, _, files in os.walk(os.path.join(REPO, "trainers")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def _imports(path):
    """[(node, imported module, names, inside a function)] of one file."""
    with open(path) as f:
        source = f.read()
    tree = ast.parse(source)
    lines = source.splitlines()
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(sub) for sub in ast.walk(node) if sub is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node, alias.name, [], id(node) in inside, lines))
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node, node.module, [a.name for a in node.names], id(node) in inside,
                          lines))
    return found


def _graph():
    modules = _modules()
    edges = {module: set() for module in modules}
    for module, path in modules.items():
        for _, imported, names, _, _ in _imports(path):
            for target in [imported] + [f"{imported}.{n}" for n in names]:
                if target in modules and target != module:
                    edges[module].add(target)
    return edges


def test_trainer_modules_import_each_other_in_one_direction():
    edges = _graph()
    assert "trainers.core.controller" in edges and "trainers.core.loop" in edges
    state, cycles = {}, []

    def visit(module, trail):
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)
    # The direction the design gives: the controller knows no runner, flags no run_dir.
    assert not edges["trainers.core.controller"] & {"trainers.core.loop",
                                                    "trainers.core.jax_loop"}
    assert "trainers.core.run_dir" not in edges["trainers.core.flags"]


def test_no_private_name_crosses_a_module_and_late_imports_say_why():
    problems = []
    for module, path in _modules().items():
        project_aliases = {}
        for node, imported, names, in_function, lines in _imports(path):
            where = f"{os.path.relpath(path, REPO)}:{node.lineno}"
            if not imported.startswith(PROJECT):
                if in_function and not _has_reason(lines, node.lineno):
                    problems.append(f"{where}: import of {imported} inside a function, no reason")
                continue
            for name in names:
                if name.startswith("_"):
                    problems.append(f"{where}: imports the private {imported}.{name}")
            if in_function and not _has_reason(lines, node.lineno):
                problems.append(f"{where}: import of {imported} inside a function, no reason")
            for alias in node.names:
                project_aliases[alias.asname or alias.name.split(".")[-1]] = imported
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                    and node.value.id in project_aliases):
                problems.append(f"{os.path.relpath(path, REPO)}:{node.lineno}: uses the "
                                f"private {node.value.id}.{node.attr}")
    assert not problems, "\n".join(problems)


def _has_reason(lines, lineno):
    # A comment on the import's line or on one of the two lines above it.
    return any("#" in line for line in lines[max(lineno - 3, 0):lineno])
