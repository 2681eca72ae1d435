"""The one compiled part of fedrank (everything else is in ``pyproject.toml``).

The reply gate's permutation check (``protos/_permutation.c``), about half the time of
the numpy check it replaces. Optional: where no C compiler is at hand the build goes on
without it and ``fedrank.protos.packing`` checks in numpy (``COMPILED_CHECK`` says which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("fedrank.protos._permutation", sources=["protos/_permutation.c"], optional=True)
    ]
)
