# Two commands are the whole set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/shardkit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

BENCHMARKS := capture passes propagation autoshard partition federated functional training

bench: $(STAMP)
	@for b in $(BENCHMARKS); do \
		if [ -f benchmarks/$$b.py ]; then echo "== benchmarks/$$b.py"; $(BIN)/python benchmarks/$$b.py || exit 1; fi; \
	done
	$(BIN)/python benchmarks/update_readme.py

clean:
	rm -rf $(VENV) build *.egg-info
