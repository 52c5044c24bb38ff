# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MTL_HOME ?= .mtl
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench airflow-ui mlflow-ui clean

venv: $(STAMP)

# torch goes first from its pinned CPU wheel: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,text]'
	touch $(STAMP)
