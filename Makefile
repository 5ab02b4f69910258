# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.feedline-installed

.PHONY: demo test lint venv clean

venv: $(STAMP)

# (Re)install when pyproject.toml changes. torch/torchvision come from local wheels where present.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing feedline into $(VENV) (first time: a few minutes)"
	@# A current pip resolves this dependency set several times faster than a venv's bundled one.
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 \
		| grep -v "^WARNING: Location '.*' is ignored" || true
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
		| grep -v "^WARNING: Location '.*' is ignored" || true
	@$(PY) -c "import ray, torch, torchvision, pipelines, cluster" \
		|| { echo "install failed: see pip output above"; exit 1; }
	@touch $@

demo: $(STAMP)
	@# numba compiles the fast path's kernels once per machine into ~/.cache/feedline/numba
	$(PY) -m pipelines.kernels --warm
	$(PY) jobs/demo.py

test: $(STAMP)
	$(PY) -m pipelines.kernels --warm
	$(VENV)/bin/ruff check pipelines cluster jobs tests
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check pipelines cluster jobs tests

clean:
	rm -rf runs .pytest_cache
