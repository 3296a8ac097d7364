# Each target creates the virtualenv on first use, so a fresh clone needs only `make demo` or `make test`.
# `make demo` installs the core and the report extra; `make test` installs everything ([dev]).
VENV := .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-demo
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: test demo lint docs bench clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)

$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[report]'
	touch $@

$(DEV_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(DEMO_STAMP)

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check --output-format concise src tests benchmarks hubconf.py
	$(VENV)/bin/ruff format --check src tests benchmarks hubconf.py

docs: $(DEV_STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

test: lint docs
	$(PY) -m pytest -q -n 2 --dist loadscope

# The data: torchvision downloads Fashion-MNIST when the network allows; offline, Debian's package has it (installed
# here when we are root; the library itself never installs anything).
demo: $(DEMO_STAMP)
	@$(PY) -c "from alexnet.experiments.demo import ensure_fashion_mnist as e; e(None)" 2>/dev/null \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	       && { apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
	            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; }; } \
	  || true
	$(VENV)/bin/alexnet demo --out runs/demo

bench: $(DEV_STAMP)
	$(VENV)/bin/alexnet bench

clean:
	rm -rf runs build dist .pytest_cache .ruff_cache
