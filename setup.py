"""The compiled parts of fedrank (everything else is in ``pyproject.toml``).

- the reply gate's permutation check (``protos/_permutation.c``), about half the time of
  the numpy check it replaces;
- a supermask layer's masked weight (``fedrank/models/_topk.c``): selection and product
  in one pass over the layer instead of several torch ops.

Both optional: where no C compiler is at hand the build goes on without them, and
``fedrank.protos.packing`` and ``fedrank.models.topk`` do the same in numpy and torch
(their ``COMPILED_CHECK`` and ``COMPILED_SELECTION`` say which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("fedrank.protos._permutation", sources=["protos/_permutation.c"], optional=True),
        Extension("fedrank.models._topk", sources=["fedrank/models/_topk.c"], optional=True),
    ]
)
