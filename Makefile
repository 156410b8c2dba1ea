# Two commands on a fresh machine:  make run   (the main job)   and   make test   (the tests).
# Both create the virtual environment .venv if it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
TASK   ?= upright
OUT    ?= runs/$(TASK)-$(shell date +%Y%m%d-%H%M%S)

.PHONY: run test lint bench clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to the CPU build; the package itself does not pin torch
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/crabs train --task $(TASK) --out $(OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) bench/train.py --task $(TASK) --seeds 0 1 2 3

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check crabs tests bench

clean-venv:
	rm -rf $(VENV)
