"""The package's shape: the library never imports the CLI, and no import cycle (imports inside functions count)."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "superpos"


def import_graph() -> dict[str, set[str]]:
    """module → the superpos modules it imports anywhere in its source (top level or inside functions)."""
    mods = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = p
    graph = {}
    for name, p in mods.items():
        pkg = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in mods and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_cycle_finder_finds_a_hand_made_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40 and "superpos.cli.main" in graph["superpos.__main__"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_library_never_imports_the_cli():
    graph = import_graph()
    cli = {m for m in graph if m.startswith("superpos.cli.main")} | {"superpos.__main__"}
    offenders = {m: sorted(graph[m] & cli) for m in graph if m not in cli and graph[m] & cli}
    assert not offenders, offenders
