#!/usr/bin/env python3
"""The module graph of the service crate (src/), and its circles.

An edge A -> B means a file of top-level module A names `crate::B` in code
(a `use` line or a path), outside comments and `#[cfg(test)]` code. Prints
each module's edges, then every circle (strongly connected component of
more than one module); exits 1 when there is a circle, so scripts/test.sh
keeps the graph acyclic (see ARCHITECTURE.md).

Usage: python3 scripts/modgraph.py [SRC_DIR]
"""

import os
import re
import sys


def modules(root):
    """Top-level module name -> its files."""
    found = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            found.setdefault(parts[0] if parts else "lib", []).append(path)
    return found


def code_of(path):
    """The file's code: without `#[cfg(test)]` modules and comment lines."""
    text = open(path, encoding="utf-8").read()
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    return "\n".join(
        line for line in text.split("\n") if not line.strip().startswith("//")
    )


def edges(found):
    graph = {name: set() for name in found}
    for name, files in found.items():
        for path in files:
            code = code_of(path)
            targets = set(re.findall(r"crate::(\w+)", code))
            for group in re.findall(r"crate::\{([^}]*)\}", code, re.S):
                targets.update(re.findall(r"(?:^|[,{\s])(\w+)", group))
            graph[name].update(t for t in targets if t != name and t in found)
    return graph


def circles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                result.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "src"
    graph = edges(modules(root))
    for name in sorted(graph):
        if graph[name]:
            print(f"{name} -> {', '.join(sorted(graph[name]))}")
    found = circles(graph)
    for circle in found:
        print(f"circle: {' <-> '.join(circle)}", file=sys.stderr)
    if found:
        sys.exit(1)
    print(f"no circle among the {len(graph)} modules of {root}/")


if __name__ == "__main__":
    main()
