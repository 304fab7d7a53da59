# The two commands: `make demo` (the main job) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= runs/demo

.PHONY: install test demo bench docs gpu-check clean

install: $(STAMP)

# Reinstall only when the package metadata changes.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,docs]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

# The main job: synthetic data -> feature cache -> training -> test BLEU (re-scored by captioning-eval) -> caption a folder.
demo: install
	$(PY) datasets/make_shapes.py --out data/shapes --train 3000 --val 300 --test 300 --seed 0
	$(VENV)/bin/captioning-train +experiment=demo hydra.run.dir=$(DEMO) trainer.overwrite=true
	$(VENV)/bin/captioning-eval annotations=data/shapes/captions_test.json results=$(DEMO)/test_captions.json output=$(DEMO)/test_scores.json
	$(VENV)/bin/captioning-caption checkpoint=$(DEMO)/checkpoints/best.pt images=data/shapes/demo_images output=$(DEMO)/gallery

# The manual: the configuration reference generated from the code, then the site (site/), failing on any warning.
docs: install
	$(PY) -m captioning.cli.reference > docs/reference/configuration.md
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: install
	$(VENV)/bin/captioning-bench all

# On a machine with CUDA: the CUDA tests, training, DDP, beam search and the benchmarks' CUDA rows, as one table.
gpu-check: install
	$(VENV)/bin/captioning-bench gpu

clean:
	rm -rf runs outputs multirun site .pytest_cache
