# Two entry points do all set-up on a fresh machine (see README):
#   make demo  - create/refresh .venv from pyproject.toml, run the whole pipeline on the
#                built-in synthetic dataset
#   make test  - create/refresh .venv, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/wsis run --stage all

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs
