# Each target creates the virtualenv on first use, so a fresh clone needs only `make demo` or `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check --output-format concise src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/alexnet demo --out runs/demo

bench: $(STAMP)
	$(VENV)/bin/alexnet bench

clean:
	rm -rf runs build dist .pytest_cache .ruff_cache
