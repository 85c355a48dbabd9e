"""Import cycles in falcon/: every import (top-level and inside functions), as an AST walk, then a DFS.

    python scripts/import_cycles.py      # prints each cycle; exit status 1 if there is one
"""
import ast
import os
import pathlib
import sys
root = pathlib.Path(__file__).resolve().parent.parent / "falcon"
os.chdir(root.parent)
root = pathlib.Path("falcon")
mods = {}
for p in root.rglob("*.py"):
    name = ".".join(p.with_suffix("").parts)
    if name.endswith(".__init__"):
        name = name[: -len(".__init__")]
    mods[name] = p
graph = {m: set() for m in mods}
for m, p in mods.items():
    pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
    for node in ast.walk(ast.parse(p.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != m and not m.startswith(t + ".") :
                graph[m].add(t)
cycles, state, stack = [], {}, []
def dfs(u):
    state[u] = 1; stack.append(u)
    for v in sorted(graph[u]):
        if state.get(v) == 1:
            cycles.append(stack[stack.index(v):] + [v])
        elif not state.get(v):
            dfs(v)
    stack.pop(); state[u] = 2
for m in sorted(graph):
    if not state.get(m):
        dfs(m)
for c in cycles:
    print(" -> ".join(c))
print(f"{len(mods)} modules, {sum(map(len, graph.values()))} import edges, {len(cycles)} cycles")
sys.exit(1 if cycles else 0)
