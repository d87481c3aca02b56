"""The shape of the code: no import circles, and imports only in the allowed directions.

Walks every import (module level and inside functions alike) of `gateway/`,
`connectors/` and `mappings/` with `ast`, and fails on a circle, on connectors or
mappings importing the gateway, on the sending and receiving sides importing each other,
or on a room importing a room above it (docs/architecture.md draws the rooms).

Run as a script for the figures: files per folder, the longest chain of imports and the
circles (`python tests/test_layout.py [--root DIR]`, any checkout of this repository).
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import Counter
from pathlib import Path

PACKAGES = ("gateway", "connectors", "mappings")

# Rooms of gateway/, lowest first: a module may import its own room and rooms below it.
# Modules not listed (gateway's own top-level files) take the rank given in TOP.
ROOMS = {
    "gateway.storage": 1, "gateway.exchange": 1,
    "gateway.audit": 2,
    "gateway.trust": 3,
    "gateway.runtime": 4, "gateway.notify": 4,
    "gateway.outbound": 5, "gateway.inbound": 5,
    "gateway.engine": 6,
    "gateway.center": 6.5,  # the center's requests: above the engine (fax cover keys)
    "gateway.api": 7, "gateway.web": 7,
    "gateway.cli": 9,
}
TOP = {"gateway.errors": 0, "gateway.config": 0, "gateway": 8, "gateway.wsgi": 9,
       "gateway.__main__": 9}
APART = ("gateway.outbound", "gateway.inbound")  # share only gateway.exchange


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of PACKAGES it imports (a package's __init__ counts as the
    package's name; `from P import m` names the submodule m where m is one)."""
    files = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            files[module_name(root, path)[0]] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        _, is_package = module_name(root, path)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in files else module
                           for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def room(module: str) -> str:
    for prefix in sorted(ROOMS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return module


def rank(module: str) -> float | None:
    r = room(module)
    return ROOMS.get(r, TOP.get(r))


def forbidden(graph: dict[str, set[str]]) -> list[str]:
    """Each import that goes the wrong way, as `importer -> imported: why`."""
    problems = []
    for importer, deps in sorted(graph.items()):
        top = importer.split(".")[0]
        for dep in sorted(deps):
            dep_top = dep.split(".")[0]
            why = None
            if top in ("connectors", "mappings") and dep_top == "gateway":
                why = f"{top}/ never imports gateway/"
            elif top == "connectors" and dep_top == "mappings":
                why = "data flows connectors -> mappings: connectors never import mappings"
            elif top == "gateway" and dep_top == "gateway":
                a, b = room(importer), room(dep)
                if a in APART and b in APART and a != b:
                    why = "the sending and receiving sides share only gateway.exchange"
                elif a != b and rank(importer) is not None and rank(dep) is not None \
                        and rank(dep) > rank(importer):
                    why = f"{a} may not import {b}, a room above it"
            if why:
                problems.append(f"{importer} -> {dep}: {why}")
    return problems


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest path of imports (over the graph with each circle counted as one step)."""
    members = {m: tuple(c) for c in circles(graph) for m in c}
    node = {m: members.get(m, (m,)) for m in graph}
    dag: dict[tuple, set[tuple]] = {}
    for m, deps in graph.items():
        dag.setdefault(node[m], set()).update(node[d] for d in deps if node[d] != node[m])
    best: dict[tuple, list[tuple]] = {}

    def walk(n):
        if n not in best:
            best[n] = [n]
            tails = [walk(d) for d in dag.get(n, ())]
            if tails:
                best[n] = [n] + max(tails, key=len)
        return best[n]

    sys.setrecursionlimit(10000)
    chain = max((walk(n) for n in dag), key=len, default=[])
    return ["+".join(n) for n in chain]


def figures(root: Path) -> dict:
    graph = import_graph(root)
    per_folder = Counter()
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            per_folder[str(path.parent.relative_to(root))] += 1
    chain = longest_chain(graph)
    return {"files_per_folder": dict(sorted(per_folder.items())),
            "modules": len(graph), "longest_chain": len(chain), "chain": chain,
            "circles": circles(graph), "forbidden": forbidden(graph)}


ROOT = Path(__file__).resolve().parent.parent


def test_no_import_circles():
    found = circles(import_graph(ROOT))
    assert found == [], "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_imports_go_the_allowed_way():
    problems = forbidden(import_graph(ROOT))
    assert problems == [], "imports the wrong way:\n" + "\n".join(problems)


def test_every_room_says_what_it_owns():
    for prefix in ROOMS:
        init = ROOT / prefix.replace(".", "/") / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_checks_catch_what_they_forbid(tmp_path):
    root = _tree(tmp_path, {
        "gateway/__init__.py": "",
        "gateway/errors.py": "",
        "gateway/storage/__init__.py": "",
        "gateway/storage/models.py": "from gateway.engine import steps\n",
        "gateway/engine/__init__.py": "",
        "gateway/engine/steps.py": "from ..storage.models import Item\n",
        "gateway/outbound/__init__.py": "",
        "gateway/outbound/delivery.py": "def f():\n    from gateway.inbound.receive import accept\n",
        "gateway/inbound/__init__.py": "",
        "gateway/inbound/receive.py": "from gateway.errors import GatewayError\n",
        "connectors/__init__.py": "",
        "connectors/base.py": "import gateway.errors\n",
        "mappings/__init__.py": "from connectors.base import RawRecord\n",
    })
    graph = import_graph(root)
    assert graph["gateway.engine.steps"] == {"gateway.storage.models"}
    assert circles(graph) == [["gateway.engine.steps", "gateway.storage.models"]]
    assert forbidden(graph) == [
        "connectors.base -> gateway.errors: connectors/ never imports gateway/",
        "gateway.outbound.delivery -> gateway.inbound.receive: "
        "the sending and receiving sides share only gateway.exchange",
        "gateway.storage.models -> gateway.engine.steps: "
        "gateway.storage may not import gateway.engine, a room above it",
    ]
    assert longest_chain({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"c"}}) == ["a", "b", "c"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Figures of the import graph")
    parser.add_argument("--root", type=Path, default=ROOT, help="a checkout of this repository")
    print(json.dumps(figures(parser.parse_args().root.resolve()), indent=1))
