# The two commands: `make demo` (the main job) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= runs/demo

.PHONY: install test demo bench clean

install: $(STAMP)

# Reinstall only when the package metadata changes.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	PATH=$(VENV)/bin:$$PATH bash scripts/demo.sh $(DEMO)

bench: install
	$(VENV)/bin/captioning-bench all

clean:
	rm -rf runs outputs multirun .pytest_cache
