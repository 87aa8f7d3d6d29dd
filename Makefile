# Each target sets up what it needs: a .venv with the package and the extras it uses.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench lint docs clean

$(VENV)/.stamp-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$*]'
	touch $@

demo: $(VENV)/.stamp-examples
	$(PY) examples/digits.py

test: $(VENV)/.stamp-test
	$(PY) -m pytest

bench: $(VENV)/.stamp-examples
	$(PY) benchmarks/step_overhead.py

docs: $(VENV)/.stamp-docs
	$(PY) -m sphinx -W --keep-going -b html docs site

lint: $(VENV)/.stamp-dev
	$(PY) -m ruff check jaxprune tests examples benchmarks
	$(PY) -m ruff format --check jaxprune tests examples benchmarks

clean:
	rm -rf $(VENV) out site
