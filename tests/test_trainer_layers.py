"""The trainer's imports flow one way: config, model, diffusion, encoders <- data, convert <- checkpoints <-
launch, extract, sample <- train.

Every import counts, also one inside a function: `data -> extract -> train -> data` was such a circle.
"""

import ast
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[1] / "trainer"

# a module may import modules of a lower layer; the leaves (layer 0) may import each other, without a circle
LAYERS = {"testing": 0, "config": 0, "model": 0, "diffusion": 0, "encoders": 0,
          "data": 1, "convert": 1,
          "checkpoints": 2,
          "launch": 3, "extract": 3, "sample": 3, "estimate": 3,
          "train": 4, "memory": 4, "parallel": 0}


def trainer_imports(folder: Path) -> dict[str, set[str]]:
    """module -> the trainer modules it imports (anywhere in the file)."""
    graph = {}
    for path in sorted(folder.glob("*.py")):
        if path.stem == "__init__":
            continue
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("trainer.")}
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0 and node.module == "trainer" or node.level == 1 and not node.module:
                    found |= {a.name for a in node.names}
                elif node.level == 0 and (node.module or "").startswith("trainer."):
                    found.add(node.module.split(".")[1])
                elif node.level == 1:
                    found.add(node.module.split(".")[0])
        graph[path.stem] = found - {path.stem}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = [f"trainer/{m}.py has no layer: add it to LAYERS in {Path(__file__).name}" for m in graph if m not in LAYERS]
    for module, imported in graph.items():
        for other in imported:
            a, b = LAYERS.get(module), LAYERS.get(other)
            if a is not None and b is not None and not (b < a or a == b == 0):
                bad.append(f"trainer.{module} (layer {a}) imports trainer.{other} (layer {b})")
    return bad


def test_the_checks_catch_a_circle_and_an_upward_import():
    old = {"data": {"extract"}, "extract": {"train"}, "train": {"data", "encoders"}, "encoders": set()}
    assert circles(old) == [["data", "extract", "train", "data"]]
    assert sorted(layer_violations(old)) == ["trainer.data (layer 1) imports trainer.extract (layer 3)",
                                             "trainer.extract (layer 3) imports trainer.train (layer 4)"]


def test_trainer_imports_have_no_circle_and_flow_down_the_layers():
    graph = trainer_imports(TRAINER)
    assert {"data", "encoders", "extract", "train"} <= set(graph)
    assert "data" in graph["train"] and "encoders" in graph["extract"]  # the walk sees the imports
    assert circles(graph) == []
    assert layer_violations(graph) == []
