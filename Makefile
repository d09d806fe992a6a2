# One-command entry points. `make demo` and `make test` work on a fresh machine with ../shared beside the repo.
VENV       ?= .venv
PY         := $(VENV)/bin/python
SHARED     ?= ../shared/data
# The pinned CPU build; on a GPU machine use e.g. `make setup TORCH_SPEC="torch==2.13.0 --index-url ..."`.
TORCH_SPEC ?= torch==2.13.0
WORKERS    ?= 2

.PHONY: setup demo test test-fast bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,ray]'
	touch $@

demo: setup
	NLTK_DATA=$(SHARED)/nltk_data $(PY) cli.py build-mixture stage2 --source-root $(SHARED)/hub --out out/stage2 --workers $(WORKERS)
	$(PY) cli.py train --data out/stage2 --preset tiny --seq-len 256 --steps 40 --nproc 2 --out out/runs/demo

test: setup
	NLTK_DATA=$(SHARED)/nltk_data MIDTRAIN_SHARED=$(SHARED) $(PY) -m pytest -q --durations=25

# the developer loop: unit tests and one small end-to-end build, a few minutes (tests/conftest.py: SLOW_MODULES)
test-fast: setup
	NLTK_DATA=$(SHARED)/nltk_data MIDTRAIN_SHARED=$(SHARED) $(PY) -m pytest -q -m "not slow" --durations=10

bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf out runs .pytest_cache
