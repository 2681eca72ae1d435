"""The shape of the code: a new task is one task module plus one registry entry.

No module outside ``fedrank/tasks/`` compares anything with a strategy's name, and no
source file grows past 400 lines (STYLE.md: past that, it is two files).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fedrank.tasks.registry import STRATEGIES

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(
    path
    for folder in ("fedrank", "server", "client", "strategies", "protos", "simulations")
    for path in (ROOT / folder).rglob("*.py")
    if not path.name.endswith(("_pb2.py", "_pb2_grpc.py"))
)
TASKS = ROOT / "fedrank" / "tasks"
# LoRA's own modes are "lora" (A and B train) and "ffa": a model setting, not a strategy.
MODELS = ROOT / "fedrank" / "models"


def _compares_with_a_strategy_name(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                elements = (
                    operand.elts
                    if isinstance(operand, ast.Tuple | ast.Set | ast.List)
                    else [operand]
                )
                if any(isinstance(e, ast.Constant) and e.value in STRATEGIES for e in elements):
                    lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_outside_the_tasks_branches_on_a_strategy_name(path: Path) -> None:
    if TASKS in path.parents or MODELS in path.parents:
        return
    found = _compares_with_a_strategy_name(ast.parse(path.read_text(encoding="utf-8")))
    assert not found, f"{path.relative_to(ROOT)} compares with a strategy name at lines {found}"


def test_the_check_finds_a_comparison_with_a_strategy_name() -> None:
    assert _compares_with_a_strategy_name(ast.parse('if s == "fedavg": pass')) == [1]
    assert _compares_with_a_strategy_name(ast.parse('x = s in ("frl", "lora")')) == [1]
    assert _compares_with_a_strategy_name(ast.parse('x = {"frl": 1}')) == []
