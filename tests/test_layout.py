"""The house's layout holds: stages import `index` (the contract and the engine) and never each other, `index`
imports no stage, only the `plan` command (a top-level module) composes the trainer's and the captioner's
estimates and nothing imports it, and no module-level import circle exists anywhere (a circle makes the order of
imports matter and hides which layer depends on which)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("index", "splitter", "captioner", "scorer", "trainer")
TOP_MODULES = ("plan",)  # single-file modules at the top level (pyproject's py-modules)
# what each package must not import (DESIGN.md's layout table); captioner may call the splitter's public
# function (`from splitter import split_videos`) to split a folder it is given, nothing deeper
FORBIDDEN = {
    "index": {"splitter", "captioner", "scorer", "trainer", "plan"},
    "splitter": {"captioner", "scorer", "trainer", "plan"},
    "captioner": {"splitter", "scorer", "trainer", "plan"},
    "scorer": {"splitter", "captioner", "trainer", "plan"},
    "trainer": {"splitter", "captioner", "scorer", "plan"},
    "plan": {"splitter", "scorer"},  # composes the trainer's and the captioner's estimates, reads data through index
}
ALLOWED = {("captioner", "splitter")}  # as `from splitter import NAME` only


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else []:
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    out.update({name: ROOT / f"{name}.py" for name in TOP_MODULES if (ROOT / f"{name}.py").is_file()})
    return out


def imports(name: str, path: Path, top_level_only: bool) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found += [(f"{base}.{a.name}", node.lineno) for a in node.names] + [(base, node.lineno)]
    return found


def test_stages_import_index_and_never_each_other():
    bad = []
    for name, path in modules().items():
        pkg = name.split(".")[0]
        for target, line in imports(name, path, top_level_only=False):
            other = target.split(".")[0]
            if other not in FORBIDDEN[pkg]:
                continue
            if (pkg, other) in ALLOWED and target.count(".") <= 1 and _is_from_top(path, line, other):
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def _is_from_top(path: Path, line: int, package: str) -> bool:
    node = next(n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(n, (ast.Import, ast.ImportFrom)) and n.lineno == line)
    return isinstance(node, ast.ImportFrom) and node.module == package and node.level == 0


def test_no_module_level_import_circle():
    mods = modules()
    graph = {name: sorted({t for t, _ in imports(name, path, top_level_only=True) if t in mods and t != name})
             for name, path in mods.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            raise AssertionError("import circle: " + " -> ".join(cycle))


def test_the_walk_sees_what_it_checks():
    """The checks above would pass on an empty tree: make sure they read the real one."""
    mods = modules()
    assert {"index.engine", "splitter.pipeline", "captioner.cli", "trainer.train"} <= set(mods)
    assert ("index.engine", 1) not in imports("captioner.pipeline", mods["captioner.pipeline"], True)
    assert any(t == "index.engine" for t, _ in imports("captioner.pipeline", mods["captioner.pipeline"], True))
    assert {"plan", "trainer.estimate", "trainer.memory", "captioner.estimate"} <= set(mods)
    plan_imports = {t.split(".")[0] for t, _ in imports("plan", mods["plan"], False)}
    assert {"trainer", "captioner"} <= plan_imports  # the one place both meet
