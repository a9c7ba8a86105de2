PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test bench lint fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/nandoctor train configs/demo.yaml --out runs/demo
	$(BIN)/nandoctor diagnose runs/demo

test: $(STAMP)
	$(BIN)/ruff check nandoctor tests bench
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check nandoctor tests bench

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) runs .pytest_cache
