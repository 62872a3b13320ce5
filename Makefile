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

# Two processes: Triton's interpreter must be switched on before triton is imported, and only for the
# kernel tests (see tests/conftest.py).
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest tests/kernels $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/kernels.py
	$(BIN)/python bench/compression.py
	$(BIN)/python bench/encode.py

lint: install
	$(BIN)/ruff check patchseek tests bench
	$(BIN)/mypy patchseek

clean:
	rm -rf $(VENV) .pytest_cache
