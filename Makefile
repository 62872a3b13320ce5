# patchseek — the commands a fresh machine needs. Everything runs offline on the CPU.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= all
PYTEST_ARGS ?=

.PHONY: install demo test test-slow test-postgres lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Installs torch 2.13.0 (CPU build where the machine has one), colpali-engine, faiss-cpu, OCR and the
# test tools. The stamp file makes a second `make install` a no-op until pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m patchseek.demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check patchseek tests bench
	$(BIN)/mypy patchseek

clean:
	rm -rf $(VENV) .pytest_cache
