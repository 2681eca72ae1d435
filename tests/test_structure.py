"""The shape of the code: a new task is one task module plus one registry entry.

No module outside ``fedrank/tasks/`` compares anything with a strategy's name, and no
source file grows past 400 lines (STYLE.md: past that, it is two files).
"""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Sequence
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


MAX_LINES = 400
GENERATED = ("_pb2.py", "_pb2_grpc.py")  # protoc's output, regenerated, never edited


def _python_files() -> list[Path]:
    """Every ``*.py`` of the repository outside ``tests/``, generated protobuf code aside.

    The files git tracks, and the new ones it would (untracked, not ignored), so that a
    file grown too long fails before it is committed. Outside a git checkout, every
    ``*.py`` under the root except hidden and ``build`` folders.
    """
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout.split("\0")
        paths = [ROOT / name for name in listed if name]
    except (OSError, subprocess.CalledProcessError):
        paths = [
            path
            for path in ROOT.rglob("*.py")
            if not any(
                part.startswith(".") or part == "build"
                for part in path.relative_to(ROOT).parts[:-1]
            )
        ]
    return sorted(
        path
        for path in set(paths)
        if path.is_file()
        and path.relative_to(ROOT).parts[0] != "tests"
        and not path.name.endswith(GENERATED)
    )


def _too_long(paths: Sequence[Path], *, root: Path = ROOT, limit: int = MAX_LINES) -> list[str]:
    """``"path: N lines"`` (relative to ``root``) for each file longer than ``limit`` lines."""
    found = []
    for path in paths:
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > limit:
            found.append(f"{path.relative_to(root)}: {count} lines")
    return found


def test_no_source_file_is_over_400_lines() -> None:
    paths = _python_files()
    # The listing reaches every top-level folder of code, scripts and benchmarks included.
    folders = {path.relative_to(ROOT).parts[0] for path in paths}
    expected = {"fedrank", "server", "client", "strategies", "protos", "simulations"}
    assert expected | {"benchmarks", "scripts", "examples"} <= folders
    too_long = _too_long(paths)
    assert not too_long, f"over {MAX_LINES} lines (split them, STYLE.md): " + "; ".join(too_long)


def test_the_check_finds_a_file_over_the_limit(tmp_path: Path) -> None:
    short, long = tmp_path / "short.py", tmp_path / "long.py"
    short.write_text("x = 1\n" * MAX_LINES, encoding="utf-8")
    long.write_text("x = 1\n" * (MAX_LINES + 1), encoding="utf-8")
    assert _too_long([short, long], root=tmp_path) == [f"long.py: {MAX_LINES + 1} lines"]
