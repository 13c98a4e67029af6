# Two commands do all set-up: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
# The tested torch pair. On a GPU workstation point it at your CUDA build, e.g.
#   make demo TORCH_PIP="torch==2.14.1 torchvision==0.29.1 --index-url <your CUDA wheel index>"
# or TORCH_PIP= (empty) to keep the torch a --system-site-packages venv already sees.
TORCH_PIP ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.wig-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: demo test check lint docs install clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(if $(strip $(TORCH_PIP)),$(BIN)/pip install --disable-pip-version-check $(TORCH_PIP))
	$(BIN)/pip install --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report results/demo/report.html
	@echo "everything under results/demo/: report.html, <model>/<fine-tune>/tables/metrics.md, plots/, <model>/<fine-tune>/grids/, logs/"

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check workflow

# everything: lint and all three test tiers (CI: .ci/run)
test: lint
	$(BIN)/python -m pytest -n $(CORES) --dist loadgroup $(PYTEST_ARGS)

# the inner loop (≤ 5 min on 2 cores): lint and the tests that run no Snakemake and no SLURM
check: lint
	$(BIN)/python -m pytest -n $(CORES) --dist loadgroup --tier=check $(PYTEST_ARGS)

# the documentation site, strictly (a broken link fails): site/ (tests/test_docs.py builds it too)
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .snakemake results site
