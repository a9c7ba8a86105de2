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

# the long property-based profile (>= 10,000 examples per property) and >= 20 kill -9 trials
fuzz: $(STAMP)
	NANDOCTOR_FUZZ=long $(BIN)/python -m pytest tests/test_fuzz.py tests/test_faults.py

clean:
	rm -rf $(VENV) runs .pytest_cache
