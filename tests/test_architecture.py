"""The tree reads as the pipeline: each layer imports only layers before it, nothing imports
lazily to break a cycle, and the zoo does not claim the top-level import name ``models``.

The import graph is read from the source with ``ast`` (not by importing), so a cycle that
Python would tolerate at run time is still caught.
"""

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scg"

# the pipeline, in order: a module may import only from its own layer or earlier ones
LAYERS = ["errors", "core", "primitives", "compiler", "estimators", "tools", "train", "zoo",
          "cli", "__init__", "__main__"]


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module):
    """``scg.compiler.plan`` -> ``compiler``; ``scg`` itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def resolve(module, path, node):
    """The absolute module a ``from ... import`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports():
    """(importer, imported, top_level) for every import of an scg module inside scg: ``from
    a.b import c`` imports ``a.b.c`` when that is a module, else ``a.b``."""
    known, out = known_modules(), []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = resolve(module, path, node)
                names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target
                         for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name and (name == "scg" or name.startswith("scg.")) and name != module:
                    out.append((module, name, id(node) in top))
    return out


def known_modules():
    return {module_name(p) for p in PACKAGE.rglob("*.py")}


def import_graph():
    known = known_modules()
    g = nx.DiGraph()
    g.add_nodes_from(known)
    for a, b, _ in imports():
        while b not in known and "." in b:   # "scg.core.record.Site" -> "scg.core.record"
            b = b.rsplit(".", 1)[0]
        if b in known and b != a:
            g.add_edge(a, b)
    return g


def test_no_scg_import_inside_a_function():
    lazy = sorted({(a, b) for a, b, top in imports() if not top})
    assert lazy == [], f"lazy imports of scg modules (a cycle being broken?): {lazy}"


def test_import_graph_is_acyclic_and_follows_the_pipeline():
    g = import_graph()
    assert ("scg.estimators.estimator", "scg.compiler.plan") in g.edges   # the graph is read
    assert nx.is_directed_acyclic_graph(g), list(nx.simple_cycles(g))[:5]
    back = sorted((a, b) for a, b in g.edges
                  if LAYERS.index(layer(b)) > LAYERS.index(layer(a)))
    assert back == [], f"imports against the pipeline order {LAYERS}: {back}"


def test_every_module_belongs_to_a_layer():
    assert {layer(m) for m in known_modules()} <= set(LAYERS) | {"models"}


def test_zoo_installs_under_scg_not_as_top_level_models(tmp_path):
    """From a folder that is not the repository, ``scg.models`` imports and ``models`` does
    not: a user's own ``models`` package cannot collide with the zoo."""
    code = ("import importlib.util, scg.models, scg.zoo; "
            "assert importlib.util.find_spec('models') is None; "
            "assert 'option_critic' in scg.zoo.names()")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


def test_a_users_models_package_does_not_shadow_the_zoo(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("MINE = True\n")
    code = ("import models, scg.zoo; assert models.MINE; "
            "assert 'signalling' in scg.zoo.names()")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
