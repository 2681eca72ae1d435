"""Tasks: one module per kind of learning, one registry entry each.

:func:`load_task` builds the task a scenario's strategy names in
:mod:`fedrank.tasks.registry` (importing its module only then: torch, PEFT and
transformers load for the runs that need them).
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from fedrank.config import Scenario
    from fedrank.tasks.base import Task


@functools.lru_cache(maxsize=8)
def load_task(scenario: Scenario) -> Task:
    """The task of ``scenario`` (one instance per scenario and process)."""
    module_name, _, class_name = scenario.spec.task.partition(":")
    task_class = getattr(importlib.import_module(module_name), class_name)
    return cast("Task", task_class(scenario))
