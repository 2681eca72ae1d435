"""The compiled parts of fedrank (everything else is in ``pyproject.toml``).

- the reply gate's permutation check (``protos/_permutation.c``), about half the time of
  the numpy check it replaces;
- a supermask layer's top-k selection and rank vector (``fedrank/models/_topk.c``): the
  masked weight kept from step to step and rewritten only where edges entered or left
  the top k, and a radix sort of the scores.

Both read Python buffers through ``fedrank/_buffer.h``.

Both optional: where no C compiler is at hand the build goes on without them, and
``fedrank.protos.packing`` and ``fedrank.models.topk`` do the same in numpy and torch
(their ``COMPILED_CHECK`` and ``COMPILED_SELECTION`` say which).
"""

from setuptools import Extension, setup

BUFFER_HEADER = "fedrank/_buffer.h"

setup(
    ext_modules=[
        Extension(
            "fedrank.protos._permutation",
            sources=["protos/_permutation.c"],
            depends=[BUFFER_HEADER],
            optional=True,
        ),
        Extension(
            "fedrank.models._topk",
            sources=["fedrank/models/_topk.c"],
            depends=[BUFFER_HEADER],
            optional=True,
        ),
    ]
)
