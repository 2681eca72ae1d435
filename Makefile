# Two commands do all the set-up on a fresh machine:
#   make run    runs the default federation (FRL, MNIST-5k, Ray simulation)
#   make test   runs the test suite
# Each creates the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedrank-installed

.PHONY: run test test-all lint typecheck format bench protos k8s-check clean

$(STAMP): pyproject.toml setup.py protos/_permutation.c fedrank/models/_topk.c fedrank/_buffer.h requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fedrank simulate $(ARGS)

test: $(STAMP)
	$(BIN)/pytest -n 3 --dist loadgroup $(ARGS)

test-all: $(STAMP)
	$(BIN)/pytest -n 3 --dist loadgroup -m '' $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MYPY=$(abspath $(BIN)/mypy) scripts/typecheck.sh
	PYTHON=$(abspath $(BIN)/python) scripts/check_protos.sh
	PYTHON=$(abspath $(BIN)/python) scripts/validate_k8s.sh

typecheck: $(STAMP)
	MYPY=$(abspath $(BIN)/mypy) scripts/typecheck.sh

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

protos: $(STAMP)
	PYTHON=$(abspath $(BIN)/python) scripts/gen_protos.sh

k8s-check: $(STAMP)
	PYTHON=$(abspath $(BIN)/python) scripts/validate_k8s.sh

# The built C modules go with the install stamp: the next target installs (builds) again.
clean:
	rm -rf build .mypy_cache .ruff_cache .pytest_cache protos/_permutation.*.so fedrank/models/_topk.*.so $(STAMP)
