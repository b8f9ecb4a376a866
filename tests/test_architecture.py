"""The package's shape: packages ranked in layers, no import upward (imports inside functions count), no cycle,
and the library never imports the CLI. docs/architecture.md draws the same picture."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "superpos"

#: each package's layer; a module may import its own package and packages of a lower rank only. Modules directly
#: under superpos/ are the ground (rank 0: errors, settings, files, integrity, device, geometry, stats, ...).
RANKS = {
    "superpos": 0,
    "superpos.store": 1,
    "superpos.model": 2,
    "superpos.dictionaries": 3,
    "superpos.experiment": 4,
    "superpos.browse": 5,
    "superpos.hypotheses": 6,
    "superpos.protocol": 7,
    "superpos.cli": 8,  # with superpos/__main__.py
}
#: the package root's lazy public re-exports (``from superpos import load_model``) are its only upward reach
FACADE = "superpos"


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


def package_of(module: str) -> str:
    """The ranked package a module belongs to: superpos.X for a module inside package X, else the ground."""
    if module == "superpos.__main__":
        return "superpos.cli"
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and ".".join(parts[:2]) in RANKS else "superpos"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a higher-ranked package, or of another package of the same rank."""
    bad = []
    for mod, targets in graph.items():
        if mod == FACADE:
            continue
        a = package_of(mod)
        for t in targets:
            b = package_of(t)
            if b != a and (RANKS[b] > RANKS[a] or (RANKS[b] == RANKS[a] and b != a)):
                bad.append(f"{mod} ({a}, rank {RANKS[a]}) imports {t} ({b}, rank {RANKS[b]})")
    return sorted(bad)


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


def test_rank_check_finds_a_hand_made_upward_import():
    graph = {"superpos.store.reader": {"superpos.model.load"}, "superpos.model.load": {"superpos.store.reader"},
             "superpos.errors": set(), "superpos.hypotheses.x.run": {"superpos.hypotheses.y.run", "superpos.errors"}}
    assert upward_imports(graph) == [
        "superpos.store.reader (superpos.store, rank 1) imports superpos.model.load (superpos.model, rank 2)"]


def test_every_package_has_a_rank():
    packages = {f"superpos.{p.name}" for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    assert packages <= set(RANKS), packages - set(RANKS)


def test_no_import_goes_up_a_layer():
    graph = import_graph()
    assert len(graph) > 60 and "superpos.cli.main" in graph["superpos.__main__"]
    assert upward_imports(graph) == []


def test_no_import_cycles():
    graph = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_library_never_imports_the_cli():
    graph = import_graph()
    cli = {m for m in graph if m.startswith("superpos.cli")} | {"superpos.__main__"}
    offenders = {m: sorted(graph[m] & cli) for m in graph if m not in cli and graph[m] & cli}
    assert not offenders, offenders
