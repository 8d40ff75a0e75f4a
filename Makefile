# Two commands for a fresh machine (Debian, Python 3.11, no GPU):
#   make demo   set up .venv and run the built-in demo on a CPU
#   make test   set up .venv with the test extras and run the whole test suite
# TORCH_SPEC picks the torch build: the CPU build by default; a GPU user passes
#   make demo TORCH_SPEC=torch   (or installs the CUDA build of their choice into .venv first).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
DEMO_ROOT ?= $(CURDIR)/demo_localfs

.PHONY: demo test install install-test tools

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[train]'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e '.[train,test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# What the tests need beyond pip (tmux for the end-to-end TUI test; Slurm and munge for
# tests/slurm) is installed with apt-get when missing; where it cannot be, those tests skip.
tools:
	@bash tests/install_tools.sh

demo: $(VENV)/.installed
	$(VENV)/bin/rltui --root "$(DEMO_ROOT)" --batch demo

test: $(VENV)/.installed-test tools
	$(PY) -m pytest -q
