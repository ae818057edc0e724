# aaclip-hf developer entry points. `make demo` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch/torchvision first: the pinned CUDA build runs on CPU and installs from a local wheel cache where present.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test test-slow bench lint format clean

$(STAMP): setup.cfg pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -c .ci/constraints.txt $(TORCH)
	$(BIN)/python -m pip install -q -c .ci/constraints.txt -e ".[test,openvino]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup  ## the main job: synthetic data, train both stages, evaluate, detect, publishable folder
	$(BIN)/aaclip demo --output demo_output

test: setup  ## the default suite (offline, < 10 min on 2 cores)
	$(BIN)/python -m pytest -q

test-slow: setup  ## long checks (learning evidence, ...), not run by CI
	$(BIN)/python -m pytest -q -m slow

lint: setup  ## ruff lint + format check, and the import contracts (layers) on an installed copy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf build/importcheck
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation --target build/importcheck . 2>/dev/null
	cd build && PYTHONPATH=importcheck ../$(BIN)/lint-imports ../pyproject.toml

format: setup  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup  ## performance report into benchmarks/results
	$(BIN)/aaclip bench --output benchmarks/results

clean:
	rm -rf build dist *.egg-info demo_output .pytest_cache
