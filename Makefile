# Each target sets up what it needs: a .venv with the package and the extras it uses.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# Installs are pinned by constraints.txt (the versions of the last green run), so a fresh clone
# tests what we tested; test-latest uses the newest releases in a venv of its own, to see drift
# early.
CONSTRAINTS := constraints.txt
LATEST := .venv-latest

.PHONY: demo test test-latest lock bench results results-quick lint docs clean

$(VENV)/.stamp-%: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[$*]'
	touch $@

demo: $(VENV)/.stamp-examples
	$(PY) examples/digits.py

# Two workers: the CI machine has two cores and most tests compile on one.
test: $(VENV)/.stamp-test
	$(PY) -m pytest -n 2

# The suite against today's newest releases of every dependency (no constraints).
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[test,examples,docs,dev]'
	$(LATEST)/bin/python -m pytest -n 2

# Re-pin constraints.txt to the newest releases, only after the suite passes with them.
lock: test-latest
	{ sed -n '/^#/p' $(CONSTRAINTS); $(LATEST)/bin/python -m pip freeze --exclude-editable | grep -v '^-e'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

bench: $(VENV)/.stamp-examples
	$(PY) benchmarks/step_overhead.py

# Every method on Fashion-MNIST (needs Debian's dataset-fashion-mnist): benchmarks/RESULTS.md.
# Rows already in benchmarks/results.json are kept, so an interrupted run resumes.
results: $(VENV)/.stamp-examples
	$(PY) benchmarks/results.py

results-quick: $(VENV)/.stamp-examples
	$(PY) benchmarks/results.py --quick

docs: $(VENV)/.stamp-docs
	$(PY) -m sphinx -W --keep-going -b html docs site

lint: $(VENV)/.stamp-dev
	$(PY) -m ruff check jaxprune tests examples benchmarks
	$(PY) -m ruff format --check jaxprune tests examples benchmarks

clean:
	rm -rf $(VENV) $(LATEST) out site
