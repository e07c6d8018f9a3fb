# Two commands on a fresh machine with only Python: `make demo` (the main job) and `make test` (the suite).
# Both keep the project's environment in .venv and reinstall only when pyproject.toml changed.
#   make demo      install if needed, then pretrain the demo CRATE-MAE on the bundled photos (--resume auto)
#   make test      install if needed, then run the whole test suite (what CI runs)
#   make quick     the tests not marked slow        make lint    ruff        make docs    the site, into site/
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu    a CPU-only PyTorch in .venv
PYTHON ?= python3
VENV ?= .venv
TORCH_INDEX ?=
ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test quick lint docs clean-venv

install: $(STAMP)

# The install step runs again only when pyproject.toml is newer than the last install.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -z "$(TORCH_INDEX)" || $(BIN)/python -m pip install --quiet torch --index-url $(TORCH_INDEX)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

demo: $(STAMP)
	$(BIN)/python recipes/pretrain.py --resume auto $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# not -q: it hides the warnings, and --strict then passes
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean-venv:
	rm -rf $(VENV)
